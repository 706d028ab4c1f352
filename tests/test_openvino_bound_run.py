"""OpenVINO's bound run (what bench times): compiled for its exact batch, as `benchmark_app -b N` runs it,
and computing the same logits as `infer`."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")


def test_bound_run_is_static_and_agrees_with_infer(tmp_path) -> None:
    from engines.openvino_engine import OpenVINOEngine
    from resnet_deploy.checkpoints import random_model
    from resnet_deploy.export import export_onnx

    path = tmp_path / "resnet20.onnx"
    export_onnx(random_model("resnet20"), path)
    batch = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with OpenVINOEngine(path, device="cpu", performance_hint="LATENCY", threads=1) as engine:
        assert engine.input.shape[0] is None  # a dynamic-batch model
        prepared = engine.prepare_run(batch, copy_free=True)
        assert prepared() > 0
        request = prepared.keep[1]
        assert list(request.get_compiled_model().inputs[0].get_partial_shape().to_shape()) == [2, 3, 32, 32]
        bound = np.array(request.get_output_tensor(0).data, copy=True)
        np.testing.assert_allclose(bound, engine.infer(batch), rtol=1e-4, atol=1e-4)
        # New data written into the run's input array is what the next call computes on (LoadGen's SingleStream).
        other = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
        assert prepared.input is not None
        np.copyto(prepared.input, other)
        prepared()
        np.testing.assert_allclose(np.array(request.get_output_tensor(0).data, copy=True), engine.infer(other),
                                   rtol=1e-4, atol=1e-4)
