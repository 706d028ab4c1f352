"""Help a user can read: every command's `--help` with readable metavars (no Typer `<list[Path]>`, `<int>` or
`{source}`), the top-level command list whole at any width, and `bench` without arguments naming artifact paths."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
import typer

from resnet_deploy.cli import app, main

ROOT = typer.main.get_command(app)
COMMANDS = sorted(ROOT.commands)
TYPER_TYPES = re.compile(r"<(int|float|str|bool|path|Path|list\[[^\]]*\])>")
METAVAR_DOTS = re.compile(r"\[?[A-Z_]+\]?\.\.\.|\[ARGS\]\.\.\.")


def run_main(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        main(list(args))
    return int(exited.value.code or 0), out.getvalue(), err.getvalue()


def test_every_command_is_checked() -> None:
    assert {"train", "export", "build-engine", "validate", "bench", "inspect", "import-weights", "demo",
            "triton-repo"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("width", [80, 120])
def test_command_help_has_readable_metavars(command: str, width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, err = run_main(command, "--help")
    assert code == 0 and out.startswith(f"Usage: resnet-deploy {command} [OPTIONS]"), err
    assert not TYPER_TYPES.findall(out), TYPER_TYPES.findall(out)
    assert "<list[" not in out and "{" not in out
    # `ARTIFACT...` is a metavar (one or more); any other `...` would be text cut short.
    assert "..." not in METAVAR_DOTS.sub("", out)
    # Every option that takes a value names it in capitals (PATH, DIR, N, ...).
    for param in ROOT.commands[command].params:
        if getattr(param, "param_type_name", "") == "option" and not param.is_flag:
            assert param.metavar and param.metavar == param.metavar.upper(), (param.opts, param.metavar)


def test_arguments_read_as_click_always_wrote_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    usage = {command: run_main(command, "--help")[1].splitlines()[0] for command in COMMANDS}
    assert usage["validate"] == "Usage: resnet-deploy validate [OPTIONS] ARTIFACT..."
    assert usage["bench"] == "Usage: resnet-deploy bench [OPTIONS] [ARTIFACT...]"
    assert usage["import-weights"] == "Usage: resnet-deploy import-weights [OPTIONS] SOURCE"
    assert usage["inspect"] == "Usage: resnet-deploy inspect [OPTIONS] [ARTIFACT]"
    arguments = run_main("validate", "--help")[1].split("Arguments:")[1].split("Options:")[0]
    assert arguments.split()[0] == "ARTIFACT..." and "list" not in arguments


@pytest.mark.parametrize("width", [50, 80, 120])
def test_top_level_lists_every_command_whole(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, err = run_main("--help")
    assert code == 0, err
    listing = out.split("Commands:")[1]
    assert "..." not in listing
    flat = " ".join(listing.split())
    for name in COMMANDS:
        summary = " ".join(ROOT.commands[name].help.split("\n\n")[0].split())
        # The first paragraph of each docstring is one short sentence: the whole of it is listed.
        assert summary.endswith(".") and len(summary) <= 50, (name, summary)
        assert f"{name} {summary}" in flat, name


def test_bench_without_arguments_names_artifact_paths() -> None:
    code, out, err = run_main("bench")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "artifact paths" in err and "--depth" in err and err.count("\n") == 1


# Options a README section names for another tool or command (torchrun's, a neighbouring command's).
README_OTHERS = {"inspect": {"--target"}, "import-weights": {"--checkpoint"}, "train": {"--nproc"},
                 "build-engine": {"--data", "--plot", "--report", "--verify"}, "bench": {"--fp16"},
                 "finetune-int8": {"--int8", "--onnx", "--target"}}  # the build-engine command it hands over to


def test_every_option_the_readme_gives_a_command_is_in_its_help() -> None:
    """Issue 27: the README documented `train --out` while `--help` shows `-o/--output` (`--out` is a hidden alias)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    checked = set()
    for section in re.split(r"\n### ", readme)[1:]:
        command = section.split(":")[0].split()[0]
        if command not in ROOT.commands:
            continue
        shown = {o for p in ROOT.commands[command].params for o in (*p.opts, *p.secondary_opts)}
        used = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", section))
        assert used - shown <= README_OTHERS.get(command, set()), (command, sorted(used - shown))
        checked.add(command)
    assert {"train", "export", "build-engine", "validate", "bench", "inspect"} <= checked
