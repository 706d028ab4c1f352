"""capture_environment: the fields every bench/validate result relies on, JSON-ready."""

from __future__ import annotations

import json

from resnet_deploy.environment import capture_environment


def test_environment_has_machine_threads_versions_and_date() -> None:
    env = capture_environment()
    assert json.loads(json.dumps(env)) == env  # JSON-ready as is
    assert env["date"].endswith("+00:00")
    assert env["cpu"]["logical_cores"] >= 1
    assert env["cpu"]["model"]
    assert env["threads"]["torch_intra_op"] >= 1
    versions = env["versions"]
    for name in ("resnet_deploy", "torch", "onnxruntime", "tensorrt", "openvino"):
        assert name in versions
    assert versions["torch"] and versions["onnxruntime"]
    assert "gpu" in env  # None without a GPU; a dict with name/driver/clocks with one
