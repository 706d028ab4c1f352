"""Regression: OpenVINO engines opened and closed in any order leave the process able to handle signals.

OpenVINO's CPU plugin swaps the main thread's alternate signal stack for one of its own while an
`ov.Core` lives and puts back the stack it found when that Core dies. Two Cores that die in the
order they were made leave the first one's unmapped stack installed; the next signal with a Python
handler (SIGCHLD from a DataLoader worker or a subprocess, Ctrl-C) then killed the process with
SIGSEGV, or wrote its frame into memory since reused (the "corrupted object" crash of pytest running
tests/test_openvino.py and then tests/test_trainer.py). Engines now share one Core.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="OpenVINO is an optional extra (pip install 'resnet-deploy[openvino]')")

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import os, signal, subprocess, sys
import numpy as np
import torch
from engines.openvino_engine import OpenVINOEngine

x = np.zeros((2, 3, 32, 32), np.float32)
first = OpenVINOEngine(sys.argv[1], inference_precision="f32")
second = OpenVINOEngine(sys.argv[1], performance_hint="throughput")
first.infer(x), second.infer(x)
first.close(); del first  # the first one opened goes first: not the reverse of the opening order
second.close(); del second

caught = []
signal.signal(signal.SIGUSR1, lambda *_: caught.append(1))
os.kill(os.getpid(), signal.SIGUSR1)
# What a training run does next: forked loader workers (their exit raises SIGCHLD, which the
# DataLoader handles in Python) and a child process.
batches = list(torch.utils.data.DataLoader(list(range(8)), batch_size=4, num_workers=1))
subprocess.run([sys.executable, "-c", "pass"], check=True)
print("ok", len(caught), len(batches))
"""


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    from resnet_deploy.checkpoints import random_model
    from resnet_deploy.export import export_onnx

    return export_onnx(random_model("resnet20", seed=0), tmp_path_factory.mktemp("ovsig") / "m.onnx",
                       verify=False).path


def test_engines_closed_out_of_order_then_signals_and_workers(onnx_model):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(onnx_model)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["ok", "1", "2"]


def test_engines_share_one_core(onnx_model):
    from engines.openvino_engine import OpenVINOEngine, shared_core

    with OpenVINOEngine(onnx_model) as a, OpenVINOEngine(onnx_model, performance_hint="throughput") as b:
        assert a._core is b._core is shared_core()
