"""Two processes under torchrun with gloo on the CPU: DDP keeps the ranks' weights identical and only
rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from resnet_deploy.checkpoints import load_model
from trainer.distributed import weights_digest


def test_two_process_gloo_run_keeps_ranks_identical_and_writes_once(tmp_path, digits_folder, digits_size):
    data, SIZE = digits_folder, digits_size  # noqa: N806 (the name the command below was written with)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RESNET_DEPLOY_CACHE": str(tmp_path / "cache")}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "resnet_deploy", "train", "--arch", "resnet20", "--data", str(data), "--image-size", str(SIZE),
        "--batch-size", "16", "--iters", "12", "--eval-every", "6", "--device", "cpu", "--out", str(out), "--json",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail("the two-process run did not finish in 10 minutes")
    assert result.returncode == 0, result.stderr[-3000:]

    document = json.loads(result.stdout)  # exactly one JSON document: rank 1 prints nothing
    assert document["world_size"] == 2 and document["global_batch"] == 32
    digests = document["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1] and document["ranks_agree"]

    saved = load_model(out / "last.safetensors")
    assert weights_digest(saved.model) == digests[0]
    assert saved.card.recipe["world_size"] == 2 and saved.card.recipe["global_batch"] == 32

    names = sorted(p.name for p in out.iterdir())
    assert names == [".lock", "best.safetensors", "curves.png", "last.pt", "last.safetensors", "metrics.jsonl",
                     "run.json"]
    iterations = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [6, 12]
