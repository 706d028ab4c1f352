"""Real TensorRT builds and runs (marker `gpu`): skipped with the reason where TensorRT or a CUDA GPU is absent.

A random-weight ResNet-20 is exported to ONNX, made FP16 and INT8 by the production `convert_fp16` and
`quantize_int8` (random calibration), compiled by `build_tensorrt_engine`, and run through `TensorRTEngine`
against ONNX Runtime on the CPU. Run them with `pytest -m gpu tests/test_tensorrt_gpu.py` on a machine with an
NVIDIA GPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy.targets.tensorrt import TensorRTBuildOptions, build_tensorrt_engine, tensorrt_usable

USABLE, REASON = tensorrt_usable()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not USABLE, reason=f"TensorRT not usable here: {REASON}")]

SMALL = TensorRTBuildOptions(min_batch=1, opt_batch=4, max_batch=8)


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def _onnxruntime_logits(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tensorrt")


@pytest.fixture(scope="module")
def onnx_fp32(workdir: Path) -> Path:
    from resnet_deploy.checkpoints import random_model
    from resnet_deploy.export import export_onnx

    return export_onnx(random_model("resnet20"), workdir / "resnet20.onnx").path


@pytest.fixture(scope="module")
def onnx_fp16(workdir: Path, onnx_fp32: Path) -> Path:
    # The production recipe (its op and node block lists kept in FP32, its metadata), as the INT8 fixture.
    from resnet_deploy.precision import convert_fp16

    return convert_fp16(onnx_fp32, workdir / "resnet20.fp16.onnx").path


@pytest.fixture(scope="module")
def onnx_int8(workdir: Path, onnx_fp32: Path) -> Path:
    # The production recipe (float biases: TensorRT's DequantizeLinear takes no INT32 input); its output is
    # checked for that in tests/test_tensorrt_unit.py with the same call.
    from resnet_deploy.precision import quantize_int8

    return quantize_int8(onnx_fp32, workdir / "resnet20.int8.onnx", calib_data=None, samples=8, check_samples=8,
                         random_calibration=True).path


@pytest.fixture(scope="module")
def fp32_plan(workdir: Path, onnx_fp32: Path):
    options = TensorRTBuildOptions(min_batch=1, opt_batch=4, max_batch=8, timing_cache=workdir / "timing.cache")
    return build_tensorrt_engine(onnx_fp32, workdir / "resnet20.plan", precision="fp32", options=options)


def test_fp32_engine_matches_onnxruntime(fp32_plan, onnx_fp32: Path):
    import tensorrt as trt

    from engines.tensorrt.engine import TensorRTEngine
    from engines.tensorrt.support import header_version, parse_version, read_plan_version

    manifest = json.loads(fp32_plan.manifest_path.read_text())
    assert manifest["tensorrt_version"] == trt.__version__
    assert manifest["batch_profile"] == {"min": 1, "opt": 4, "max": 8}
    assert manifest["card"]["arch"] == "resnet20"
    assert len(manifest["source_onnx"]["sha256"]) == 64
    plan_version = read_plan_version(fp32_plan.plan_path.read_bytes()[:28])
    assert plan_version == header_version(parse_version(trt.__version__))  # one byte per part (build 300 → 44)
    assert fp32_plan.timing_cache is not None and fp32_plan.timing_cache.stat().st_size > 0

    with TensorRTEngine(fp32_plan.plan_path) as engine:
        assert engine.precision == "fp32" and engine.batch_range == (1, 8)
        assert engine.input.shape == (None, 3, 32, 32)
        for n in (1, 7):
            batch = _images(n, seed=n)
            got = engine.infer(batch)
            assert got.shape == (n, 10) and got.dtype == np.float32
            want = _onnxruntime_logits(onnx_fp32, batch)
            assert _relative_error(got, want) < 2e-2  # TF32 math is TensorRT's FP32 default
        first = engine.infer(_images(4))
        assert np.array_equal(first, engine.infer(_images(4)))  # deterministic


def test_batch_outside_the_profile_is_refused(fp32_plan):
    from engines.base import EngineInputError
    from engines.tensorrt.engine import TensorRTEngine

    with TensorRTEngine(fp32_plan.plan_path) as engine, pytest.raises(EngineInputError, match="1..8"):
        engine.infer(_images(9))


def test_cuda_graph_and_timing_without_copies(fp32_plan):
    from engines.tensorrt.engine import TensorRTEngine

    batch = _images(4, seed=3)
    with TensorRTEngine(fp32_plan.plan_path) as plain:
        want = plain.infer(batch)
    with TensorRTEngine(fp32_plan.plan_path, cuda_graph=True) as graphed:
        assert np.allclose(graphed.infer(batch), want, atol=1e-5)
        assert np.allclose(graphed.infer(batch), want, atol=1e-5)  # replay
        described = graphed.describe()
        assert described["cuda_graph"] or described["cuda_graph_fallback"]
    with TensorRTEngine(fp32_plan.plan_path, include_copies=False, cuda_graph=True) as engine:
        prepared = engine.prepare(batch)
        engine.run_prepared(prepared)
        assert np.allclose(engine.fetch(prepared), want, atol=1e-5)
        timed = engine.timed_call(batch)
        for _ in range(3):
            timed()


def test_stale_engine_is_refused(fp32_plan, tmp_path: Path):
    from engines.tensorrt.engine import TensorRTEngine
    from engines.tensorrt.manifest import StaleEngineError

    plan = tmp_path / "moved.plan"
    shutil.copy(fp32_plan.plan_path, plan)
    manifest = json.loads(fp32_plan.manifest_path.read_text())
    manifest["gpu"] = {"name": "Some Other GPU", "compute_capability": "5.0"}
    (tmp_path / "moved.plan.json").write_text(json.dumps(manifest))
    with pytest.raises(StaleEngineError, match="Some Other GPU"):
        TensorRTEngine(plan)


def test_manifest_of_another_plan_is_refused(fp32_plan, tmp_path: Path):
    from engines.tensorrt.engine import TensorRTEngine
    from engines.tensorrt.manifest import ManifestError

    plan = tmp_path / "edited.plan"
    plan.write_bytes(fp32_plan.plan_path.read_bytes() + b"\0")
    shutil.copy(fp32_plan.manifest_path, tmp_path / "edited.plan.json")
    with pytest.raises(ManifestError, match="sha256 differs"):
        TensorRTEngine(plan)


def test_timing_cache_is_reused(fp32_plan, workdir: Path, onnx_fp32: Path):
    options = TensorRTBuildOptions(min_batch=1, opt_batch=4, max_batch=8, timing_cache=fp32_plan.timing_cache)
    again = build_tensorrt_engine(onnx_fp32, workdir / "again.plan", precision="fp32", options=options)
    assert again.timing_cache_status == "loaded"


def test_fp16_engine_runs_mostly_fp16(workdir: Path, onnx_fp16: Path, onnx_fp32: Path):
    from engines.tensorrt.engine import TensorRTEngine

    result = build_tensorrt_engine(onnx_fp16, workdir / "resnet20.fp16.plan", precision="fp16", options=SMALL)
    assert result.precision_check["passed"] and result.precision_check["verified"]
    assert result.layer_precisions.get("fp16", 0) > result.layer_precisions.get("fp32", 0)
    batch = _images(5, seed=5)
    with TensorRTEngine(result.plan_path) as engine:
        assert engine.precision == "fp16"
        assert _relative_error(engine.infer(batch), _onnxruntime_logits(onnx_fp32, batch)) < 5e-2


def test_fp16_request_on_an_fp32_graph_fails_the_precision_check(workdir: Path, onnx_fp32: Path):
    from resnet_deploy.errors import CheckFailed

    with pytest.raises(CheckFailed, match="FP32"):
        build_tensorrt_engine(onnx_fp32, workdir / "fake.fp16.plan", precision="fp16", options=SMALL)
    assert not (workdir / "fake.fp16.plan").exists()


def test_int8_engine_runs_int8_layers(workdir: Path, onnx_int8: Path, onnx_fp32: Path):
    from engines.tensorrt.engine import TensorRTEngine

    result = build_tensorrt_engine(onnx_int8, workdir / "resnet20.int8.plan", precision="int8", options=SMALL)
    assert result.precision_check["passed"]
    assert result.layer_precisions.get("int8", 0) > 0
    batch = _images(8, seed=8)
    with TensorRTEngine(result.plan_path) as engine:
        got = engine.infer(batch)
    want = _onnxruntime_logits(onnx_fp32, batch)
    assert np.isfinite(got).all()
    cosine = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cosine > 0.9


def test_static_batch_onnx_gets_a_fixed_profile(workdir: Path):
    from engines.tensorrt.engine import TensorRTEngine
    from resnet_deploy.checkpoints import random_model
    from resnet_deploy.export import export_onnx

    onnx_path = export_onnx(random_model("resnet20"), workdir / "static2.onnx", batch=2).path
    result = build_tensorrt_engine(onnx_path, workdir / "static2.plan", precision="fp32")
    assert result.batch_profile == (2, 2, 2)
    with TensorRTEngine(result.plan_path) as engine:
        assert engine.batch_range == (2, 2)
        assert engine.infer(_images(2)).shape == (2, 10)


def test_cuda_graph_recaptures_across_batch_sizes(fp32_plan):
    from engines.tensorrt.engine import TensorRTEngine

    batches = {n: _images(n, seed=10 + n) for n in (4, 7)}
    with TensorRTEngine(fp32_plan.plan_path) as plain:
        want = {n: plain.infer(x) for n, x in batches.items()}
    with TensorRTEngine(fp32_plan.plan_path, cuda_graph=True) as graphed:
        for n in (4, 7, 4):  # each change of batch size re-captures; the replay must match plain runs
            assert np.allclose(graphed.infer(batches[n]), want[n], atol=1e-5), n
    with TensorRTEngine(fp32_plan.plan_path, include_copies=False, cuda_graph=True) as engine:
        prepared = {n: engine.prepare(x) for n, x in batches.items()}
        for n in (4, 7, 4):
            engine.run_prepared(prepared[n])
            assert np.allclose(engine.fetch(prepared[n]), want[n], atol=1e-5), n


def test_inspector_with_a_context_shows_every_compute_layer_format(fp32_plan):
    manifest = json.loads(fp32_plan.manifest_path.read_text())
    assert manifest["artifact_check"]["verified"]  # the inspector verdict ("precision_check" is the ONNX's own)
    assert "unknown" not in manifest["layer_precisions"]  # formats were printed (the context had its shape)


def test_version_compatible_plan_reopens(workdir: Path, onnx_fp32: Path, fp32_plan):
    from engines.tensorrt.engine import TensorRTEngine

    options = TensorRTBuildOptions(min_batch=1, opt_batch=4, max_batch=8, version_compatible=True)
    result = build_tensorrt_engine(onnx_fp32, workdir / "resnet20.vc.plan", precision="fp32", options=options)
    batch = _images(4, seed=21)
    with TensorRTEngine(result.plan_path) as vc, TensorRTEngine(fp32_plan.plan_path) as ordinary:
        assert _relative_error(vc.infer(batch), ordinary.infer(batch)) < 2e-2
