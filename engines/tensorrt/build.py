"""Compile an ONNX model into a TensorRT plan: a strongly typed network, the path that works on 10.x and 11.x.

Precision is decided by the ONNX graph (FP16-typed tensors, Q/DQ nodes), never by builder flags:
TensorRT 11 removed `BuilderFlag.FP16/INT8` and the calibrators, and on 10.x those flags are a build
error together with STRONGLY_TYPED. The per-version differences come from `support.version_plan`.

The build: `OnnxParser.parse_from_file` (every parser error collected), one optimization profile
for the batch dimension (min/opt/max; a static-batch ONNX gets a fixed profile), the workspace
memory-pool limit, the builder optimization level, DETAILED profiling verbosity (needed for the
inspector's per-layer precisions, read through an execution context set to the opt shape), a timing
cache (given as bytes, returned updated), optional VERSION_COMPATIBLE and hardware-compatibility level.
A `None` from `build_serialized_network` or a parse failure becomes one `TensorRTBuildError` that
carries the builder's log tail. File writing is left to the caller (resnet_deploy writes atomically).

Pages followed (10.x and 11.x):
* Python API, Builder / IBuilderConfig / OnnxParser / Runtime / EngineInspector:
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
  https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/_static/python-api/infer/Core/EngineInspector.html
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/parsers/Onnx/pyOnnx.html
* Strong typing and the removed weak-typing flags (10.x → 11.x migration, Python):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-patterns.html
* Version and hardware compatibility:
  https://docs.nvidia.com/deeplearning/tensorrt/10.16.1/inference-library/version-compatibility.html
  https://docs.nvidia.com/deeplearning/tensorrt/11.1.0/inference-library/engine-compatibility.html
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.base import EngineError, EngineInputError
from engines.tensorrt.support import (
    HARDWARE_COMPATIBILITY_LEVELS,
    VersionPlan,
    enum_name,
    format_log_tail,
    format_version,
    load_tensorrt,
    make_logger,
    network_creation_flags,
    normalize_hardware_compatibility,
    parse_version,
    read_plan_version,
    version_plan,
)


class TensorRTBuildError(EngineError):
    """Parsing or building failed; the message carries the parser errors and the builder's log tail."""


@dataclass(frozen=True)
class BuildSettings:
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_bytes: int | None = None  # None: TensorRT's default (the device's memory)
    opt_level: int | None = None  # builder_optimization_level 0..5; None: TensorRT's default (3)
    version_compatible: bool = False
    hardware_compatibility: str = "none"  # none, ampere_plus, same_compute_capability (aliases accepted)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # -1 where dynamic
    dtype: str  # TensorRT DataType name: FLOAT, HALF, ...

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class BuildOutput:
    plan: bytes
    engine_information: str  # the inspector's JSON text
    input: TensorSpec
    output: TensorSpec
    batch_profile: tuple[int, int, int]
    tensorrt_version: str
    plan_version: tuple[int, ...] | None
    build_seconds: float
    timing_cache: bytes | None
    timing_cache_status: str  # "loaded", "created", "rejected (rebuilt)", "off"
    tf32: bool | None = None  # FP32 layers may use TF32 math (TensorRT's default); None: flag unknown
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Pure helpers (unit-tested without TensorRT)


def resolve_batch_profile(input_shape: tuple[int, ...], min_batch: int, opt_batch: int,
                          max_batch: int) -> tuple[int, int, int] | None:
    """The (min, opt, max) batch for an NCHW input; None when the input is fully static (no profile needed).

    Only the batch may be dynamic. A static-batch ONNX fixes the profile to its batch; asking for
    another range then is an error rather than a silently different engine.
    """
    if len(input_shape) != 4:
        raise EngineInputError(f"expected an NCHW image input, got shape {list(input_shape)}")
    if any(d < 0 for d in input_shape[1:]):
        raise EngineInputError(
            f"only the batch dimension may be dynamic, got input shape {list(input_shape)}; "
            "export the model with a fixed input size"
        )
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise EngineInputError(
            f"the batch profile needs 1 <= min <= opt <= max, got min {min_batch}, opt {opt_batch}, max {max_batch}"
        )
    batch = input_shape[0]
    if batch >= 1:
        requested = (min_batch, opt_batch, max_batch)
        if requested not in {(1, 8, 32), (batch, batch, batch)}:  # (1, 8, 32): the defaults, nothing asked
            raise EngineInputError(
                f"the ONNX input has a static batch of {batch}, so the engine runs batch {batch} only; "
                f"re-export with a dynamic batch (export --batch dynamic) to build for {min_batch}..{max_batch}"
            )
        return None
    return min_batch, opt_batch, max_batch


def profile_shapes(input_shape: tuple[int, ...], batch: tuple[int, int, int]) -> tuple[tuple[int, ...], ...]:
    """min/opt/max shapes: the batch from the profile, every other dimension fixed and equal in all three."""
    rest = tuple(input_shape[1:])
    return tuple((b, *rest) for b in batch)


# --------------------------------------------------------------------------------------------------
# The build


def build_plan(onnx_path: str | Path, settings: BuildSettings | None = None, *,
               timing_cache: bytes | None = None, use_timing_cache: bool = True) -> BuildOutput:
    """Parse `onnx_path` as a strongly typed network and build a serialized plan (needs TensorRT and a GPU)."""
    settings = settings or BuildSettings()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineInputError(f"{onnx_path}: no such ONNX file")
    hardware = _normalized_hardware(settings.hardware_compatibility)
    trt = load_tensorrt()
    plan = version_plan(parse_version(trt.__version__))
    logger = make_logger(trt)

    builder = trt.Builder(logger)
    if builder is None:
        raise TensorRTBuildError(f"TensorRT could not create a builder. {format_log_tail(logger.tail())}")
    network = builder.create_network(network_creation_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_format_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError(
            f"TensorRT could not parse {onnx_path}:\n  " + "\n  ".join(errors or ["(no parser error recorded)"])
            + f"\n{format_log_tail(logger.tail())}"
        )
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise EngineInputError(f"{onnx_path}: expected one input and one output, got {network.num_inputs} "
                               f"inputs and {network.num_outputs} outputs")
    net_in, net_out = network.get_input(0), network.get_output(0)
    input_spec = TensorSpec(net_in.name, tuple(int(d) for d in net_in.shape), enum_name(net_in.dtype))
    output_spec = TensorSpec(net_out.name, tuple(int(d) for d in net_out.shape), enum_name(net_out.dtype))
    batch = resolve_batch_profile(input_spec.shape, settings.min_batch, settings.opt_batch, settings.max_batch)

    config = builder.create_builder_config()
    if batch is not None:
        profile = builder.create_optimization_profile()
        low, opt, high = profile_shapes(input_spec.shape, batch)
        try:
            profile.set_shape(input_spec.name, low, opt, high)
        except Exception as exc:  # the binding raises RuntimeError for inconsistent shapes
            raise TensorRTBuildError(f"invalid batch profile {batch} for {input_spec.name}: {exc}") from None
        if config.add_optimization_profile(profile) < 0:
            raise TensorRTBuildError(f"TensorRT rejected the batch profile {batch} for input {input_spec.name!r}. "
                                     f"{format_log_tail(logger.tail())}")
    _configure(trt, plan, config, settings, hardware)
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    tf32 = bool(config.get_flag(tf32_flag)) if tf32_flag is not None else None
    cache_status = "off"
    if use_timing_cache:
        cache_status = _attach_timing_cache(config, timing_cache)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT failed to build an engine from {onnx_path} "
                                 f"(build_serialized_network returned None). {format_log_tail(logger.tail())}")
    plan_bytes = bytes(serialized)
    cache_out = bytes(config.get_timing_cache().serialize()) if use_timing_cache else None
    opt_shape = profile_shapes(input_spec.shape, batch)[1] if batch is not None else input_spec.shape
    info = _engine_information(trt, logger, plan_bytes, settings.version_compatible, input_spec.name, opt_shape)
    fixed = input_spec.shape[0]
    return BuildOutput(
        plan=plan_bytes,
        engine_information=info,
        input=input_spec,
        output=output_spec,
        batch_profile=batch or (fixed, fixed, fixed),
        tensorrt_version=trt.__version__,
        plan_version=read_plan_version(plan_bytes[:28]),
        build_seconds=seconds,
        timing_cache=cache_out,
        timing_cache_status=cache_status,
        tf32=tf32,
        warnings=logger.warnings(),
    )


def _normalized_hardware(text: str) -> str:
    try:
        return normalize_hardware_compatibility(text)
    except ValueError as exc:
        raise EngineInputError(str(exc)) from None


def _configure(trt: Any, plan: VersionPlan, config: Any, settings: BuildSettings, hardware: str) -> None:
    if settings.workspace_bytes is not None:
        if settings.workspace_bytes <= 0:
            raise EngineInputError(f"the workspace must be positive, got {settings.workspace_bytes} bytes")
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_bytes))
    if settings.opt_level is not None:
        if not 0 <= settings.opt_level <= 5:
            raise EngineInputError(f"the builder optimization level is 0..5, got {settings.opt_level}")
        config.builder_optimization_level = int(settings.opt_level)
    # DETAILED: the inspector then lists each layer's tensors and weights (the realized-precision check).
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if hardware != "none":
        member = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY_LEVELS[hardware], None)
        if member is None:
            raise EngineInputError(f"TensorRT {trt.__version__} has no hardware compatibility level "
                                   f"{HARDWARE_COMPATIBILITY_LEVELS[hardware]}; upgrade TensorRT or use ampere+")
        config.hardware_compatibility_level = member
    # Never a weak-typing precision flag: precision comes from the ONNX graph (see module docstring).
    for name in plan.forbidden_builder_flags:
        member = getattr(trt.BuilderFlag, name, None)
        if member is not None and config.get_flag(member):
            raise TensorRTBuildError(f"BuilderFlag.{name} is set; this project builds strongly typed networks only")


def _attach_timing_cache(config: Any, data: bytes | None) -> str:
    try:
        cache = config.create_timing_cache(data or b"")
    except Exception:  # a corrupt cache file: treated like a refused one below
        cache = None
    if cache is not None and config.set_timing_cache(cache, False):
        return "loaded" if data else "created"
    # A cache from another GPU or TensorRT version (or a corrupt one) is refused: start empty rather than fail.
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, False):
        raise TensorRTBuildError("TensorRT refused even an empty timing cache")
    return "rejected (rebuilt)"


def _engine_information(trt: Any, logger: Any, plan_bytes: bytes, version_compatible: bool, input_name: str,
                        shape: tuple[int, ...]) -> str:
    runtime = trt.Runtime(logger)
    if version_compatible:
        runtime.engine_host_code_allowed = True  # our own plan: its embedded lean runtime may run
    engine = runtime.deserialize_cuda_engine(plan_bytes)
    if engine is None:
        raise TensorRTBuildError(f"TensorRT built a plan but cannot load it back. {format_log_tail(logger.tail())}")
    try:
        return engine_information(trt, engine, input_name, shape, log_tail=logger.tail)
    finally:
        del engine, runtime  # engine before runtime


def engine_information(trt: Any, engine: Any, input_name: str, shape: tuple[int, ...], *,
                       log_tail: Callable[[], list[str]] = list) -> str:
    """The inspector's JSON for `engine` with an execution context whose input shape is `shape` (the opt shape).

    Without a context, "values dependent on input shapes will be displayed as -1 and format information
    will not be shown" (`IEngineInspector::setExecutionContext`, 10.16 and 11.1), and the realized-precision
    check reads exactly that datatype text; trtexec and Polygraphy attach a context with the shapes set.
    """
    context = engine.create_execution_context()
    if context is None:
        raise TensorRTBuildError(f"TensorRT could not create an execution context to inspect the engine "
                                 f"(out of GPU memory?). {format_log_tail(log_tail())}")
    if not context.set_input_shape(input_name, tuple(shape)):
        raise TensorRTBuildError(f"TensorRT refused input shape {list(shape)} for {input_name!r} while inspecting "
                                 f"the engine. {format_log_tail(log_tail())}")
    inspector = engine.create_engine_inspector()
    if inspector is None:
        raise TensorRTBuildError(f"TensorRT could not create an engine inspector to check the realized precision. "
                                 f"{format_log_tail(log_tail())}")
    try:
        # The property setter calls IEngineInspector::setExecutionContext and drops its bool: read the
        # context back, since a refused attach leaves none and the inspector then prints no formats.
        inspector.execution_context = context
        if inspector.execution_context is None:
            raise TensorRTBuildError(
                "TensorRT refused to attach the execution context to the engine inspector "
                "(IEngineInspector::setExecutionContext failed), so it would print no per-layer formats and the "
                f"realized precision could not be checked. {format_log_tail(log_tail())}")
        return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    finally:
        del inspector, context  # inspector before context (before the caller's engine and runtime)


def _format_parser_error(error: Any) -> str:
    def call(name: str) -> str:
        method = getattr(error, name, None)
        try:
            return str(method()) if callable(method) else ""
        except Exception:  # a binding without this accessor
            return ""

    where = " ".join(part for part in (call("node_name"), call("node_operator")) if part)
    code = call("code")
    text = call("desc") or str(error)
    return f"{where + ': ' if where else ''}{text}{f' [{code}]' if code else ''}"


__all__ = [
    "BuildOutput",
    "BuildSettings",
    "TensorRTBuildError",
    "TensorSpec",
    "build_plan",
    "engine_information",
    "format_log_tail",
    "format_version",
    "profile_shapes",
    "resolve_batch_profile",
]
