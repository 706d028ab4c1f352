"""Progress in a log (stderr not a terminal): each finished phase is one line, printed when it finishes, not again
at the end of the command with a clock that kept running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import time
from resnet_deploy.commands._output import PhaseProgress
bar = PhaseProgress()
for i in range(1, 6):
    bar.update("calibrate", i, 5)
for i in range(1, 4):
    bar.update("check", i, 3)
time.sleep(1.2)
bar.stop()
"""


def test_each_finished_phase_is_one_line_with_its_own_elapsed_time() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RESNET_DEPLOY_PROGRESS_INTERVAL": "100"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    finished = [line for line in lines if "(100%)" in line]
    assert [line.split(":")[0] for line in finished] == ["calibrate", "check"], lines
    # Finished before the 1.2 s sleep: a clock still running at stop() would read 0:00:01.
    assert all("0:00:00 elapsed" in line for line in finished), lines
    assert all("ETA" not in line for line in finished), lines
