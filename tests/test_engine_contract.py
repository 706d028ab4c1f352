"""The engine contract: every backend available here meets the same interface (engines.base.Engine).

One suite, parametrized over `ENGINE_FACTORIES`. Every backend declared in the registry
(resnet_deploy/registry/backends.py) gets a `declared-<name>` entry automatically: its target builds an
FP32 artifact of the contract model and `open_engine` opens it through the declaration (PyTorch: the card
file), so a new backend is held to the contract without touching this file. Other entries cover engine
options (precisions, providers, hints): a `make(model)` that opens its engine on the shared contract
model (a PyTorch module, its card file and its ONNX export), the tolerance it is held to against
the PyTorch fp32 reference, an `unavailable()` that returns a skip reason (or None), and marks
(`pytest.mark.gpu` for CUDA/TensorRT).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engines.base import Engine, EngineError, EngineInputError, PreparedRun, TensorInfo
from resnet_deploy.compare import compare_logits

ARCH = "resnet20"
INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
PRECISIONS = {"fp32", "fp16", "bf16", "int8"}


@dataclass
class ContractModel:
    """The model every engine is opened on, in each artifact form a backend may need."""

    module: torch.nn.Module  # fp32 reference; factories must copy it before changing it
    card_path: Path  # .safetensors model card
    onnx_path: Path  # verified FP32 ONNX export
    workdir: Path  # where a backend may build its own artifact (engine plan, IR)


@dataclass(frozen=True)
class EngineFactory:
    id: str
    make: Callable[[ContractModel], Engine]
    tolerance: float  # max |logit diff| vs the fp32 reference, relative to max(1, max |logit|)
    unavailable: Callable[[], str | None] = lambda: None
    marks: tuple[Any, ...] = ()
    deterministic: bool = True  # same input, same output bit for bit


def _cuda_unavailable() -> str | None:
    return None if torch.cuda.is_available() else "CUDA is not available"


def _ort_cuda_unavailable() -> str | None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "ONNX Runtime has no CUDAExecutionProvider"
    return _cuda_unavailable()


def _torch(precision: str, device: str = "cpu", channels_last: bool = False) -> Callable[[ContractModel], Engine]:
    def make(model: ContractModel) -> Engine:
        from engines.torch_engine import TorchEngine

        return TorchEngine(copy.deepcopy(model.module), input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                           precision=precision, device=device, channels_last=channels_last)

    return make


def _torch_card(model: ContractModel) -> Engine:
    from resnet_deploy.artifacts import open_engine

    return open_engine(model.card_path)


def _onnxruntime_cpu(model: ContractModel) -> Engine:
    from resnet_deploy.artifacts import open_engine

    return open_engine(model.onnx_path, threads=1)


def _onnxruntime_cuda(model: ContractModel) -> Engine:
    from engines.onnxruntime_engine import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(model.onnx_path, device="cuda")
    assert engine.providers[0] == "CUDAExecutionProvider", f"fell back to {engine.providers}"
    return engine


def _openvino_unavailable() -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("openvino") else "OpenVINO is not installed (extra: openvino)"


def _openvino_onnx(precision: str, hint: str = "LATENCY") -> Callable[[ContractModel], Engine]:
    def make(model: ContractModel) -> Engine:
        from engines.openvino_engine import OpenVINOEngine

        return OpenVINOEngine(model.onnx_path, inference_precision=precision, performance_hint=hint)

    return make


def _openvino_ir(model: ContractModel) -> Engine:
    from resnet_deploy.artifacts import open_engine
    from resnet_deploy.targets.openvino import build_openvino_ir

    xml = model.workdir / f"{ARCH}.fp32.xml"
    if not xml.is_file():
        build_openvino_ir(model.onnx_path, xml, precision="fp32")
    return open_engine(xml)  # no precision given: the IR's stored f32 hint applies


def _tensorrt_unavailable() -> str | None:
    from resnet_deploy.targets.tensorrt import tensorrt_usable

    usable, reason = tensorrt_usable()
    return None if usable else f"TensorRT not usable here: {reason}"


def _tensorrt(model: ContractModel) -> Engine:
    from resnet_deploy.artifacts import open_engine
    from resnet_deploy.targets.tensorrt import TensorRTBuildOptions, build_tensorrt_engine

    plan = model.workdir / f"{ARCH}.fp32.plan"
    if not plan.is_file():  # the batch profile covers the suite's batches (1 and 7)
        build_tensorrt_engine(model.onnx_path, plan, precision="fp32",
                              options=TensorRTBuildOptions(min_batch=1, opt_batch=4, max_batch=8))
    return open_engine(plan)


def _declared(name: str) -> EngineFactory:
    """The contract entry of a declared backend: its own target's FP32 artifact, opened through the registry."""
    from resnet_deploy import registry

    spec = registry.backend(name)

    def make(model: ContractModel) -> Engine:
        from resnet_deploy.artifacts import Artifact, open_engine

        if spec.target is None:  # nothing is built for it: its artifact is the card file
            return open_engine(model.card_path)
        path = model.workdir / f"{ARCH}.declared.{name}{spec.default_suffix()}"
        if not path.is_file():
            from resnet_deploy.builder import compile_artifact

            source = model.card_path if spec.source == "card" else model.onnx_path
            built = compile_artifact(name, source, path, precision="fp32",
                                     card=Artifact(model.onnx_path).card, device=spec.devices[0])
            undeclared = set(built.manifest.target) - set(spec.manifest_fields)
            assert not undeclared, f"{name}'s manifest records fields its declaration does not list: {undeclared}"
        return open_engine(path, device=spec.devices[0])

    def unavailable() -> str | None:
        if not spec.installed():
            return f"{spec.display} is not installed ({spec.install_hint})"
        if spec.target is None:
            return None
        from resnet_deploy.targets.base import target_usable

        usable, why = target_usable(name, spec.devices[0])
        return None if usable else why

    gpu = "cpu" not in spec.devices
    marks = (pytest.mark.gpu,) if gpu else ()
    return EngineFactory(f"declared-{name}", make, tolerance=1e-2 if gpu else 1e-4, unavailable=unavailable,
                         marks=marks + ((pytest.mark.slow,) if spec.slow_build else ()), deterministic=not gpu)


def _declared_factories() -> list[EngineFactory]:
    from resnet_deploy import registry

    return [_declared(name) for name in registry.backend_names()]


# Engine options beyond each backend's declared entry (appended at the end).
ENGINE_FACTORIES: list[EngineFactory] = [
    EngineFactory("torch-fp32", _torch("fp32"), tolerance=1e-5),
    EngineFactory("torch-fp32-channels-last", _torch("fp32", channels_last=True), tolerance=1e-4),
    EngineFactory("torch-bf16", _torch("bf16"), tolerance=5e-2),
    EngineFactory("torch-card-file", _torch_card, tolerance=1e-5),
    EngineFactory("onnxruntime-cpu", _onnxruntime_cpu, tolerance=1e-4),
    # CUDA convolutions default to TF32 in PyTorch and ONNX Runtime, hence the looser FP32 bounds.
    EngineFactory("torch-cuda-fp32", _torch("fp32", "cuda"), tolerance=1e-2, unavailable=_cuda_unavailable,
                  marks=(pytest.mark.gpu,), deterministic=False),
    EngineFactory("torch-cuda-fp16", _torch("fp16", "cuda"), tolerance=5e-2, unavailable=_cuda_unavailable,
                  marks=(pytest.mark.gpu,), deterministic=False),
    EngineFactory("onnxruntime-cuda", _onnxruntime_cuda, tolerance=1e-2, unavailable=_ort_cuda_unavailable,
                  marks=(pytest.mark.gpu,), deterministic=False),
    EngineFactory("openvino-onnx-fp32", _openvino_onnx("fp32"), tolerance=1e-4, unavailable=_openvino_unavailable),
    # bf16 where the CPU has it (AVX-512 BF16, AMX), else OpenVINO runs and reports fp32.
    EngineFactory("openvino-onnx-bf16", _openvino_onnx("bf16"), tolerance=5e-2, unavailable=_openvino_unavailable),
    EngineFactory("openvino-onnx-fp32-throughput", _openvino_onnx("fp32", "THROUGHPUT"), tolerance=1e-4,
                  unavailable=_openvino_unavailable),
    EngineFactory("openvino-ir-fp32", _openvino_ir, tolerance=1e-4, unavailable=_openvino_unavailable),
    # TensorRT builds FP32 with TF32 convolutions allowed, like the CUDA rows above.
    EngineFactory("tensorrt-fp32", _tensorrt, tolerance=1e-2, unavailable=_tensorrt_unavailable,
                  marks=(pytest.mark.gpu,), deterministic=False),
    *_declared_factories(),
]


@pytest.fixture(scope="module")
def contract_model(tmp_path_factory: pytest.TempPathFactory,
                   calibrate_batchnorm: Callable[..., None]) -> ContractModel:
    from resnet_deploy.card import save_card
    from resnet_deploy.checkpoints import load_model, random_model
    from resnet_deploy.export import export_onnx

    workdir = tmp_path_factory.mktemp("contract")
    loaded = random_model(ARCH)
    calibrate_batchnorm(loaded.model, shape=INPUT_SHAPE)
    card_path = save_card(workdir / f"{ARCH}.safetensors", loaded.model, loaded.card)
    onnx_path = export_onnx(load_model(card_path), workdir / f"{ARCH}.onnx").path
    return ContractModel(module=loaded.model, card_path=card_path, onnx_path=onnx_path, workdir=workdir)


@pytest.fixture(scope="module")
def inputs() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(7)
    return {n: rng.standard_normal((n, *INPUT_SHAPE), dtype=np.float32) for n in (1, 7)}


@pytest.fixture(scope="module")
def reference(contract_model: ContractModel, inputs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    with torch.inference_mode():
        return {n: contract_model.module(torch.from_numpy(x)).numpy() for n, x in inputs.items()}


def _params() -> list[Any]:
    return [pytest.param(f, id=f.id, marks=f.marks) for f in ENGINE_FACTORIES]


@pytest.fixture(scope="module", params=_params())
def factory(request: pytest.FixtureRequest) -> EngineFactory:
    reason = request.param.unavailable()
    if reason:
        pytest.skip(f"{request.param.id}: {reason}")
    return request.param


@pytest.fixture(scope="module")
def engine(factory: EngineFactory, contract_model: ContractModel) -> Any:
    with factory.make(contract_model) as opened:
        yield opened


def test_describes_itself(engine: Engine) -> None:
    assert isinstance(engine.name, str) and engine.name not in ("", "base")
    assert engine.precision in PRECISIONS
    assert isinstance(engine.device, str) and engine.device
    described = engine.describe()
    assert {"backend", "precision", "device"} <= described.keys()
    json.dumps(described, default=str)  # recordable next to a result


def test_io_metadata(engine: Engine) -> None:
    assert isinstance(engine.input, TensorInfo) and isinstance(engine.output, TensorInfo)
    assert engine.input.name == "input"
    assert engine.input.dtype == "float32"
    assert engine.input.shape[0] is None, "the contract model has a dynamic batch axis"
    assert tuple(engine.input.shape[1:]) == INPUT_SHAPE
    assert engine.output.dtype == "float32"
    assert engine.output.shape[-1] == NUM_CLASSES


@pytest.mark.parametrize("batch_size", [1, 7])
def test_shapes_dtypes_and_agreement(
    engine: Engine, factory: EngineFactory, inputs: dict[int, np.ndarray], reference: dict[int, np.ndarray],
    batch_size: int,
) -> None:
    logits = engine.infer(inputs[batch_size])
    assert isinstance(logits, np.ndarray)
    assert logits.shape == (batch_size, NUM_CLASSES)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    result = compare_logits(reference[batch_size], logits, tolerance=factory.tolerance, relative=True)
    assert result.passed, f"{factory.id}: max |diff| {result.max_abs_logit_diff:.3g} > {result.allowed:.3g} " \
                          f"or {result.disagreements} top-1 disagreements"


def assert_same(factory: EngineFactory, first: np.ndarray, second: np.ndarray) -> None:
    """Bit-identical for a deterministic engine, else within its tolerance."""
    if factory.deterministic:
        np.testing.assert_array_equal(first, second)
    else:
        np.testing.assert_allclose(first, second, rtol=0, atol=factory.tolerance * max(1.0, np.abs(first).max()))


def test_deterministic_and_batch_independent(
    engine: Engine, factory: EngineFactory, inputs: dict[int, np.ndarray]
) -> None:
    batch = inputs[7]
    first, second = engine.infer(batch), engine.infer(batch.copy())
    assert_same(factory, first, second)
    # A sample's logits do not depend on the rest of its batch.
    single = engine.infer(np.ascontiguousarray(batch[3:4]))
    np.testing.assert_allclose(single[0], first[3], rtol=0, atol=factory.tolerance * max(1.0, np.abs(first).max()))
    assert not np.shares_memory(first, batch)


def test_accepts_strided_and_read_only_arrays(
    engine: Engine, factory: EngineFactory, inputs: dict[int, np.ndarray]
) -> None:
    """Views users make every day (a BGR→RGB channel flip, a read-only buffer) are valid input."""
    batch = inputs[7]
    flipped = batch[:, ::-1]
    assert_same(factory, engine.infer(flipped), engine.infer(np.ascontiguousarray(flipped)))
    frozen = batch.copy()
    frozen.setflags(write=False)
    assert_same(factory, engine.infer(frozen), engine.infer(batch.copy()))


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(np.zeros((2, 3, 31, 32), np.float32), id="wrong-spatial-size"),
        pytest.param(np.zeros((2, 1, 32, 32), np.float32), id="wrong-channels"),
        pytest.param(np.zeros((3, 32, 32), np.float32), id="no-batch-axis"),
        pytest.param(np.zeros((2, 32, 32, 3), np.float32), id="nhwc"),
        pytest.param(np.zeros((2, 3, 32, 32), np.float64), id="float64"),
        pytest.param(np.zeros((2, 3, 32, 32), np.uint8), id="uint8"),
        pytest.param(np.zeros((0, 3, 32, 32), np.float32), id="empty-batch"),
        pytest.param([[0.0] * 32] * 32, id="not-an-array"),
    ],
)
def test_rejects_bad_input_cleanly(engine: Engine, bad: Any) -> None:
    with pytest.raises(EngineInputError) as caught:
        engine.infer(bad)
    assert isinstance(caught.value, EngineError) and caught.value.exit_code == 2
    assert "\n" not in str(caught.value) and str(caught.value)


@pytest.mark.parametrize("copy_free", [False, True], ids=["with-copies", "copy-free"])
def test_prepared_run_is_what_bench_times(engine: Engine, inputs: dict[int, np.ndarray], copy_free: bool) -> None:
    """bench's view of an engine: one batch bound once, then synchronized calls that return milliseconds."""
    prepared = engine.prepare_run(inputs[7], copy_free=copy_free)
    assert isinstance(prepared, PreparedRun)
    assert prepared.copies in ({"included", "excluded"} if copy_free else {"included"})
    assert prepared.timer in {"host", "cuda-events"}
    for _ in range(2):
        latency = prepared()
        assert isinstance(latency, float) and math.isfinite(latency) and latency >= 0.0
    # Binding a batch leaves the engine usable as before.
    assert engine.infer(inputs[1]).shape == (1, NUM_CLASSES)


def test_prepare_run_rejects_bad_input(engine: Engine) -> None:
    with pytest.raises(EngineInputError):
        engine.prepare_run(np.zeros((2, 3, 31, 32), np.float32), copy_free=True)


def test_close_and_context_manager(factory: EngineFactory, contract_model: ContractModel,
                                   inputs: dict[int, np.ndarray]) -> None:
    with factory.make(contract_model) as opened:
        assert opened.infer(inputs[1]).shape == (1, NUM_CLASSES)
    with pytest.raises(EngineError, match="closed"):
        opened.infer(inputs[1])
    with pytest.raises(EngineError, match="closed"):
        opened.prepare_run(inputs[1])
    opened.close()  # closing twice is harmless


# The engines whose copy-free run reads a host array in place (CPU, no cast or relayout of the input).
IN_PLACE_INPUT = {"torch-fp32", "torch-card-file", "onnxruntime-cpu", "openvino-onnx-fp32", "openvino-onnx-bf16",
                  "openvino-ir-fp32"}


def test_prepared_input_is_the_array_the_run_reads(factory: EngineFactory, engine: Engine,
                                                   inputs: dict[int, np.ndarray]) -> None:
    """`PreparedRun.input`: where LoadGen's SingleStream writes each sample; None where the run reads a copy."""
    prepared = engine.prepare_run(inputs[7].copy(), copy_free=True)
    # A declared-<backend> entry may do either; whichever it does is held to its rule.
    declared_in_place = factory.id.startswith("declared-") and prepared.input is not None
    if factory.id not in IN_PLACE_INPUT and not declared_in_place:
        assert prepared.input is None
        return
    assert prepared.input is not None and prepared.input.shape == inputs[7].shape
    assert prepared.input.dtype == np.float32 and prepared.input.flags.writeable
    held = [k for k in prepared.keep if hasattr(k, "data_ptr")]  # ONNX Runtime's OrtValue
    if held:
        assert held[0].data_ptr() == prepared.input.ctypes.data  # the bound OrtValue is that memory
    np.copyto(prepared.input, inputs[7][::-1])
    assert prepared() >= 0.0
