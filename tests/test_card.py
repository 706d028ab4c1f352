"""Model cards and every kind of checkpoint a `--checkpoint` flag accepts."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from resnet_deploy.card import ModelCard, read_card, save_card
from resnet_deploy.checkpoints import TRAINER_CHECKPOINT_FORMAT, load_model, parse_renames
from resnet_deploy.errors import UsageError
from resnet_deploy.models import create_model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_card_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    model = create_model("resnet20", num_classes=3)
    card = ModelCard.default_for("resnet20", class_names=["cat", "dog", "emu"])
    card.metrics["top1"] = 91.5
    path = save_card(tmp_path / "m.safetensors", model, card)
    assert read_card(path).class_names == ["cat", "dog", "emu"]
    loaded = load_model(path)
    assert loaded.kind == "card" and loaded.card.metrics["top1"] == 91.5
    assert loaded.card.lineage["source_sha256"] == loaded.source_sha256
    assert _same_weights(loaded.model, model)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize("nesting", ["bare", "state_dict", "model", "model_state_dict"])
def test_foreign_weights_nested_and_prefixed(tmp_path: Path, nesting: str) -> None:
    model = create_model("resnet20")
    state = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    obj = state if nesting == "bare" else {nesting: state, "epoch": 3}
    torch.save(obj, tmp_path / "w.pth")
    loaded = load_model(tmp_path / "w.pth", arch="resnet20")
    assert loaded.kind == "foreign" and _same_weights(loaded.model, model)
    assert loaded.card.lineage["imported"] is True


def test_rename_maps_foreign_prefixes_and_num_classes_is_inferred(tmp_path: Path) -> None:
    model = create_model("resnet20", num_classes=4)
    state = {k.replace("fc.", "linear."): v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "akamaster.th")
    with pytest.raises(UsageError, match="missing keys: fc.weight, fc.bias.*unexpected keys: linear"):
        load_model(tmp_path / "akamaster.th", arch="resnet20")
    loaded = load_model(tmp_path / "akamaster.th", arch="resnet20", renames=parse_renames(["linear.=fc."]))
    assert loaded.card.num_classes == 4 and _same_weights(loaded.model, model)


def test_wrong_architecture_lists_the_problem(tmp_path: Path) -> None:
    torch.save(create_model("resnet20").state_dict(), tmp_path / "w.pt")
    with pytest.raises(UsageError, match="missing keys"):
        load_model(tmp_path / "w.pt", arch="resnet32")
    with pytest.raises(UsageError, match="pass --arch"):
        load_model(tmp_path / "w.pt")


def test_trainer_checkpoint_is_accepted(tmp_path: Path) -> None:
    model = create_model("resnet20")
    card = ModelCard.default_for("resnet20")
    torch.save({"format": TRAINER_CHECKPOINT_FORMAT, "card": card.to_json(), "model": model.state_dict(),
                "iteration": torch.tensor(5)}, tmp_path / "last.pt")
    loaded = load_model(tmp_path / "last.pt")
    assert loaded.kind == "trainer-checkpoint" and _same_weights(loaded.model, model)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_malicious(path: Path, marker: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": _Payload(str(marker))}, handle)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _write_malicious(tmp_path / "evil.pth", marker)
    with pytest.raises(UsageError, match="refused to load"):
        load_model(tmp_path / "evil.pth", arch="resnet20")
    assert not marker.exists()


def test_malicious_pickle_via_cli_is_one_error_line(tmp_path: Path, cli) -> None:
    marker = tmp_path / "pwned"
    _write_malicious(tmp_path / "evil.pth", marker)
    result = cli("inspect", str(tmp_path / "evil.pth"), "--arch", "resnet20")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "refused to load" in lines[0]
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_not_a_checkpoint_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(UsageError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "notes.pth", arch="resnet20")
    with pytest.raises(UsageError, match="no such file"):
        load_model(tmp_path / "absent.pth", arch="resnet20")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(UsageError, match="unsupported weights file"):
        load_model(tmp_path / "w.txt", arch="resnet20")


def test_import_weights_writes_a_card_with_preprocessing(tmp_path: Path, cli) -> None:
    torch.save({"model": create_model("resnet20", num_classes=2).state_dict()}, tmp_path / "w.pth")
    classes = tmp_path / "data" / "train"
    for name in ("ants", "bees"):
        (classes / name).mkdir(parents=True)
    out = tmp_path / "card.safetensors"
    result = cli("import-weights", str(tmp_path / "w.pth"), "--arch", "resnet20", "--classes-from",
                 str(tmp_path / "data"), "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                 "--input-size", "40", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["num_classes"] == 2
    card = read_card(out)
    assert card.class_names == ["ants", "bees"]
    assert card.preprocessing.mean == (0.5, 0.5, 0.5) and card.preprocessing.input_size == 40
    result = cli("import-weights", str(tmp_path / "w.pth"), "--arch", "resnet20", "--classes", "a,b,c",
                 "--output", str(tmp_path / "bad.safetensors"))
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert not (tmp_path / "bad.safetensors").exists()


def test_a_card_gets_the_umask_permissions_like_every_artifact(tmp_path: Path) -> None:
    """safetensors replaces the file it writes (mode 0600); the atomic write sets the usual mode after it."""
    previous = os.umask(0o022)
    try:
        path = save_card(tmp_path / "m.safetensors", create_model("resnet20"), ModelCard.default_for("resnet20"))
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
