"""Progress as plain lines when stderr is a pipe, --quiet, and Ctrl-C / SIGTERM during bench: the rows already
measured are printed (and in --json, with "interrupted": true), then one `error: interrupted` line, exit 130."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Torch only: no ONNX export before the timing starts.
BENCH = ("bench", "--depth", "20", "--backends", "torch", "--precisions", "fp32,bf16", "--batch-sizes", "1,2",
         "--threads", "1", "--warmup", "1")
PLAIN_LINE = re.compile(r"^round \d/3: timing resnet20 torch \w+ batch \d: \d+/\d+ \(\d+%\), \d:\d\d:\d\d elapsed",
                        re.M)


def _env(interval: str = "0") -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RESNET_DEPLOY_PROGRESS_INTERVAL": interval}


def run_cli(*args: str, interval: str = "0") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnet_deploy", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=_env(interval))


def test_progress_is_plain_lines_when_stderr_is_a_pipe() -> None:
    proc = run_cli(*BENCH, "--iters", "6", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(PLAIN_LINE.findall(proc.stderr)) >= 3, proc.stderr
    assert "\x1b[" not in proc.stderr  # no terminal control sequences in a log
    assert "━" not in proc.stderr  # and no bar
    json.loads(proc.stdout)  # stdout stays one JSON document


def test_quiet_drops_progress_and_notes_but_not_the_result() -> None:
    proc = run_cli(*BENCH, "--iters", "3", "--quiet", "--json")
    assert proc.returncode == 0, proc.stderr
    assert not PLAIN_LINE.search(proc.stderr)
    assert "round 1/3" not in proc.stderr
    assert json.loads(proc.stdout)["results"]


def test_quiet_and_verbose_are_on_every_command() -> None:
    from typer.main import get_command

    from resnet_deploy.cli import app

    group = get_command(app)
    for name, command in group.commands.items():
        options = {opt for param in command.params for opt in param.opts}
        assert {"--quiet", "-q", "--verbose", "-v"} <= options, name


def _signal_at_line(args: list[str], sig: int, starts_with: str, *, settle: float = 0.0,
                    ) -> subprocess.CompletedProcess:
    """Run `resnet_deploy *args`; once a stderr line starts with `starts_with` (and `settle` seconds on), send
    `sig` and wait for the process to end. stderr is read line by line as it comes, in a thread."""
    proc = subprocess.Popen([sys.executable, "-m", "resnet_deploy", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if line.startswith(starts_with):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(300), "".join(lines)
        time.sleep(settle)
        proc.send_signal(sig)
        assert proc.stdout is not None
        stdout = proc.stdout.read()  # not communicate(): the reader thread owns stderr
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, "".join(lines))


def _interrupt_bench(sig: int, *extra: str) -> subprocess.CompletedProcess:
    """Start a long bench; once the second round has begun (every row has a round), send `sig`."""
    return _signal_at_line([*BENCH, "--iters", "900", *extra], sig, "round 2/3", settle=0.3)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_bench_keeps_its_rows_in_json(sig: int) -> None:
    proc = _interrupt_bench(sig, "--json")
    assert proc.returncode == 130, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["interrupted"] is True and doc["planned_rows"] == 4
    assert len(doc["results"]) == 4  # every row had its first round
    assert all(any(flag.startswith("interrupted:") for flag in row["flags"]) for row in doc["results"])
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: interrupted \(4 of 4 rows measured\)", last), proc.stderr
    assert "Traceback" not in proc.stderr


def test_interrupted_bench_prints_its_table() -> None:
    proc = _interrupt_bench(signal.SIGTERM)
    assert proc.returncode == 130, proc.stderr
    assert "resnet20 on" in proc.stdout and "flagged" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("error: interrupted (")


def test_interrupted_build_engine_says_what_it_completed_and_leaves_nothing_half_written(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = _signal_at_line(["build-engine", "--depth", "20", "--int8", "--random-calibration", "--target",
                            "onnxruntime", "-o", str(out / "m.onnx")], signal.SIGINT, "exporting")
    assert proc.returncode == 130, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted (") and "nothing half-written was left" in last, last
    assert "Traceback" not in proc.stderr
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name or p.name.startswith(".")]
