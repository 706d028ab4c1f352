"""`demo` into a folder that holds an earlier run: refused with a hint that names `--force` (which demo has),
and `--force` removes only the demo's own outputs."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from resnet_deploy.cli import main
from resnet_deploy.demo.outputs import DEMO_OUTPUTS, claim_out_folder
from resnet_deploy.errors import UsageError


def _earlier_run(out: Path) -> None:
    (out / "train").mkdir(parents=True)
    (out / "train" / "last.pt").write_bytes(b"checkpoint")
    (out / "artifacts").mkdir()
    (out / "artifacts" / "resnet20.onnx").write_bytes(b"onnx")
    for name in ("report.md", "validate.md", "bench.md", "bench.png"):
        (out / name).write_text(name)
    (out / "data" / "train").mkdir(parents=True)
    (out / "notes.txt").write_text("the user's own file")


def test_a_fresh_or_foreign_folder_is_used_as_it_is(tmp_path: Path) -> None:
    assert claim_out_folder(tmp_path / "new", force=False) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert claim_out_folder(tmp_path / "mine", force=False) == [] and (tmp_path / "mine" / "notes.txt").is_file()


def test_second_run_is_refused_naming_force(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    _earlier_run(out)
    with pytest.raises(UsageError, match="pass --force to start over") as refused:
        claim_out_folder(out, force=False)
    assert "train/" in str(refused.value) and "--resume" not in str(refused.value)
    assert (out / "train" / "last.pt").is_file()  # nothing removed without --force

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()) as stdout, contextlib.redirect_stderr(err), \
            pytest.raises(SystemExit) as exited:
        main(["demo", "--output", str(out)])
    assert exited.value.code == 2 and stdout.getvalue() == ""
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--force" in lines[0]


def test_force_removes_only_the_demo_outputs(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    _earlier_run(out)
    removed = claim_out_folder(out, force=True)
    assert {p.name for p in removed} == {"train", "artifacts", "report.md", "validate.md", "bench.md", "bench.png",
                                         "data"}
    assert all(not (out / name).exists() for name in DEMO_OUTPUTS)
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert claim_out_folder(out, force=False) == []  # ready for a fresh run


def test_force_keeps_the_users_data_inside_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    _earlier_run(out)
    (out / "data" / "train" / "a.png").write_bytes(b"png")
    claim_out_folder(out, force=True, keep=out / "data")
    assert (out / "data" / "train" / "a.png").is_file() and not (out / "train").exists()
