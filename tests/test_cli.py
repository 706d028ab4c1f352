"""The CLI root: commands, version, inspect, and the error contract."""

from __future__ import annotations

import json

import pytest

COMMANDS = ("train", "export", "build-engine", "validate", "bench", "inspect", "import-weights", "demo")


def test_help_lists_every_command(cli) -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_version(cli) -> None:
    from resnet_deploy import __version__

    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"resnet-deploy {__version__}"


@pytest.mark.parametrize(
    ("args", "params_m", "macs_g"),
    [(("--depth", "50"), 25.6, 4.1), (("--arch", "resnet20"), 0.27, 0.041), (("--depth", "18"), 11.7, 1.8)],
)
def test_inspect_json(cli, args, params_m, macs_g) -> None:
    result = cli("inspect", *args, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["params"] / 1e6 == pytest.approx(params_m, rel=0.02)
    assert data["macs"] / 1e9 == pytest.approx(macs_g, rel=0.03)


def test_inspect_a_card(cli, tmp_path) -> None:
    from resnet_deploy.card import ModelCard, save_card
    from resnet_deploy.models import create_model

    save_card(tmp_path / "m.safetensors", create_model("resnet20"), ModelCard.default_for("resnet20"))
    result = cli("inspect", str(tmp_path / "m.safetensors"), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["arch"] == "resnet20" and data["card"]["preprocessing"]["input_size"] == 32


def test_inspect_a_trained_card_shows_its_recipe_and_metrics_readably(cli, tmp_path) -> None:
    """Issue 27: the recipe row printed Python dict reprs and the metrics 96.88888888888889."""
    import dataclasses

    from resnet_deploy.card import ModelCard, save_card
    from resnet_deploy.models import create_model

    card = dataclasses.replace(
        ModelCard.default_for("resnet20"), metrics={"top1": 96.88888888888889, "loss": 0.10234567, "iterations": 300},
        recipe={"recipe": "cifar", "paper_recipe": {"augmentation": "crop-flip", "milestone_iters": [32000, 48000]},
                "schedule": {"lr": 0.025, "notes": ["global batch 32 is 0.25x the recipe's 128: lr 0.1 → 0.025 "
                                                    "(scaled linearly)"]}})
    save_card(tmp_path / "best.safetensors", create_model("resnet20"), card)
    result = cli("inspect", str(tmp_path / "best.safetensors"), env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "top1 96.89" in text and "96.888" not in text and "loss 0.1023" in text
    assert "{" not in text and "'" not in text.replace("recipe's", "")  # no Python reprs
    assert "recipe: paper recipe" in text and "milestone iters 32000/48000" in text
    assert "recipe: schedule: notes" in text and "(scaled linearly)" in text


@pytest.mark.parametrize(
    "args",
    [("inspect", "--depth", "19"), ("inspect", "--bogus"), ("inspect", "--depth", "50", "--arch", "resnet50"),
     ("inspect",), ("inspect", "missing.safetensors")],
)
def test_bad_usage_is_one_error_line_and_exit_2(cli, args) -> None:
    result = cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert result.stdout == ""
