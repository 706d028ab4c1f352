"""The TensorRT target of `build-engine`: compile a verified precision ONNX into a plan plus its manifest.

The precision was decided (and proven on ONNX Runtime) in the ONNX model: FP32, FP16-typed, or Q/DQ
INT8. This step compiles it as a strongly typed network (`engines.tensorrt_build`), reads back the
engine inspector's per-layer precisions and refuses an FP16/INT8 engine that ended up mostly FP32, or
whose precision could not be read ("unknown" is not verified), with `CheckFailed`, then writes
`<output>` and `<output>.json` atomically. The manifest records the TensorRT and CUDA versions, the GPU
and its compute capability, the precision and per-precision layer counts, the batch profile, the build
options, the source ONNX's sha256, the model card (preprocessing and class names) and the build time;
`engines.tensorrt_engine.TensorRTEngine` refuses the plan on another TensorRT version or GPU.

Without TensorRT or a CUDA GPU, `build_tensorrt_engine` raises `BackendUnavailable("TensorRT is not
available (...)")` (exit 2) before doing any work; `tensorrt_usable()` lets `--target auto` choose.
TensorRT documentation followed: see the docstrings of `engines/tensorrt_build.py` (10.x and 11.x
Python API, strong typing, version/hardware compatibility) and `engines/tensorrt_inspect.py`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_deploy import registry
from resnet_deploy.artifacts import Manifest, manifest_versions
from resnet_deploy.atomic import sha256_file, write_bytes
from resnet_deploy.errors import BackendUnavailable, CheckFailed, UsageError
from resnet_deploy.targets.base import BuildResult, Target, TargetRequest, mixed_precision_of, precision_check_of

if TYPE_CHECKING:  # engines.tensorrt is imported lazily at run time
    from engines.tensorrt.inspect import PrecisionSummary, PrecisionVerdict

PRECISIONS = registry.backend("tensorrt").precisions  # the declaration's (registry/backends.py)
PLAN_SUFFIXES = registry.backend("tensorrt").suffixes
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 10**3, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
               "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30}


def tensorrt_usable() -> tuple[bool, str]:
    """(True, "") when TensorRT 10+ imports and torch sees a CUDA GPU; else (False, the reason)."""
    from engines.tensorrt.support import probe_tensorrt

    reason = probe_tensorrt()
    return reason is None, reason or ""


def parse_byte_size(text: str | int) -> int:
    """'4G' / '4GiB' → 4294967296, '512M' → 536870912, '1000000' → 1000000 (for --workspace)."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise UsageError(f"not a size: {text!r} (use bytes or a unit: 512M, 4G, 4GiB)")
        value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value <= 0:
        raise UsageError(f"the size must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class TensorRTBuildOptions:
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_bytes: int | None = None  # memory-pool limit for tactics; None: TensorRT's default
    opt_level: int | None = None  # builder optimization level 0..5; None: TensorRT's default (3)
    timing_cache: Path | None = None  # loaded if present, saved (atomically) after the build
    version_compatible: bool = False  # later TensorRT versions may load the plan (may be slower)
    hardware_compatibility: str = "none"  # none | ampere+ | same-cc (may be slower)

    def validated(self) -> TensorRTBuildOptions:
        """These options with the hardware level normalized; a UsageError names the first bad value."""
        from engines.tensorrt.support import normalize_hardware_compatibility

        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UsageError(f"the batch profile needs 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                             f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise UsageError(f"--workspace must be positive, got {self.workspace_bytes}")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise UsageError(f"--opt-level is 0..5 (TensorRT's default is 3), got {self.opt_level}")
        if self.timing_cache is not None and Path(self.timing_cache).is_dir():
            raise UsageError(f"--timing-cache {self.timing_cache} is a folder; give a file path")
        try:
            hardware = normalize_hardware_compatibility(self.hardware_compatibility)
        except ValueError as exc:
            raise UsageError(f"--hardware-compatibility: {exc}") from None
        return TensorRTBuildOptions(self.min_batch, self.opt_batch, self.max_batch, self.workspace_bytes,
                                    self.opt_level, self.timing_cache, self.version_compatible, hardware)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timing_cache"] = str(self.timing_cache) if self.timing_cache is not None else None
        return data


@dataclass
class TensorRTBuildResult:
    plan_path: Path
    manifest_path: Path
    precision: str
    layer_precisions: dict[str, int]
    precision_check: dict[str, Any]
    batch_profile: tuple[int, int, int]
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    build_seconds: float
    timing_cache: Path | None = None
    timing_cache_status: str = "off"
    warnings: list[str] = field(default_factory=list)
    manifest: Manifest | None = field(default=None, repr=False)  # what was written beside the plan

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("manifest")
        data["plan_path"] = str(self.plan_path)
        data["manifest_path"] = str(self.manifest_path)
        data["timing_cache"] = str(self.timing_cache) if self.timing_cache is not None else None
        data["batch_profile"] = {"min": self.batch_profile[0], "opt": self.batch_profile[1],
                                 "max": self.batch_profile[2]}
        return data


def build_tensorrt_engine(onnx_path: str | Path, output: str | Path, *, precision: str,
                          options: TensorRTBuildOptions | None = None, card: Any = None) -> TensorRTBuildResult:
    """Compile `onnx_path` (which carries `precision`: fp32, fp16 or int8) into the TensorRT plan `output`.

    `card` is the model card (a `ModelCard` or its dict); None reads it from the ONNX metadata.
    Raises BackendUnavailable without TensorRT/GPU (exit 2), UsageError for bad input (exit 2),
    CheckFailed when an fp16/int8 engine is mostly FP32 or its realized precision could not be verified
    (exit 1; no plan is written).
    """
    usable, reason = tensorrt_usable()
    if not usable:
        raise BackendUnavailable(f"TensorRT is not available ({reason})")
    onnx_path, output = Path(onnx_path), Path(output)
    if not onnx_path.is_file():
        raise UsageError(f"{onnx_path}: no such ONNX file")
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if output.suffix.lower() not in PLAN_SUFFIXES:
        raise UsageError(f"{output}: a TensorRT engine is written as .plan or .engine")
    options = (options or TensorRTBuildOptions()).validated()
    warnings: list[str] = []
    card_dict = _card_dict(card, onnx_path, warnings)

    from engines.tensorrt.build import BuildSettings, build_plan

    cache_path = Path(options.timing_cache) if options.timing_cache is not None else None
    cache_in = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else None
    settings = BuildSettings(min_batch=options.min_batch, opt_batch=options.opt_batch, max_batch=options.max_batch,
                             workspace_bytes=options.workspace_bytes, opt_level=options.opt_level,
                             version_compatible=options.version_compatible,
                             hardware_compatibility=options.hardware_compatibility)
    built = build_plan(onnx_path, settings, timing_cache=cache_in, use_timing_cache=cache_path is not None)
    if cache_path is not None and built.timing_cache:
        write_bytes(cache_path, built.timing_cache)  # worth keeping even if the check below fails

    summary, verdict = check_realized_precision(built.engine_information, precision, output)
    warnings.extend(built.warnings[-10:])

    gpu_name, capability, driver = _current_gpu()
    manifest = _manifest(built, onnx_path, output, precision, options, card_dict, summary.counts, verdict.to_dict(),
                         gpu_name, capability, driver)
    write_bytes(output, built.plan)
    manifest_file = manifest.write(output)
    return TensorRTBuildResult(
        plan_path=output, manifest_path=manifest_file, precision=precision, layer_precisions=summary.counts,
        precision_check=verdict.to_dict(), batch_profile=built.batch_profile,
        tensorrt_version=built.tensorrt_version, gpu_name=gpu_name, compute_capability=capability,
        build_seconds=round(built.build_seconds, 3), timing_cache=cache_path,
        timing_cache_status=built.timing_cache_status, warnings=warnings, manifest=manifest,
    )


def check_realized_precision(engine_information: str, precision: str,
                             output: str | Path) -> tuple[PrecisionSummary, PrecisionVerdict]:
    """(summary, verdict) of the inspector's JSON; CheckFailed (exit 1) unless the verdict passed.

    An fp16/int8 engine whose precision could not be verified (names only, or layers reading "unknown")
    is refused like one that ran in FP32: the build asked for DETAILED verbosity and a shaped context, so
    missing formats mean the check could not run, and an unchecked engine is not shipped.
    """
    from engines.tensorrt.inspect import precision_verdict, summarize_engine_information

    summary = summarize_engine_information(engine_information)
    verdict = precision_verdict(summary, precision)
    if not verdict.passed:
        raise CheckFailed(f"{output}: {verdict.message}; no engine was written")
    return summary, verdict


def _card_dict(card: Any, onnx_path: Path, warnings: list[str]) -> dict[str, Any] | None:
    if card is None:
        from resnet_deploy.artifacts import artifact_card

        try:
            return artifact_card(onnx_path).to_dict()
        except UsageError as exc:
            warnings.append(f"no model card recorded in the engine manifest ({exc}); validate will refuse it")
            return None
    if isinstance(card, dict):
        return dict(card)
    if hasattr(card, "to_dict"):
        return card.to_dict()
    raise UsageError(f"card must be a ModelCard or a dict, got {type(card).__name__}")


def _current_gpu() -> tuple[str, str, str | None]:
    """Name, compute capability and driver version of the GPU TensorRT built on (the current device)."""
    import torch

    from resnet_deploy.environment import gpu_info

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    driver = (gpu_info() or {}).get("driver_version")  # the same for every GPU of the machine
    return props.name, f"{props.major}.{props.minor}", driver


def _manifest(built: Any, onnx_path: Path, output: Path, precision: str, options: TensorRTBuildOptions,
              card: dict[str, Any] | None, counts: dict[str, int], check: dict[str, Any], gpu_name: str,
              capability: str, driver: str | None) -> Manifest:
    """The one Manifest; `target` carries the fields `engines.tensorrt.manifest.EngineManifest` reads back."""
    import hashlib

    import torch

    from engines.tensorrt.support import format_version

    low, opt, high = built.batch_profile
    plan_sha256 = hashlib.sha256(built.plan).hexdigest()
    return Manifest(
        backend="tensorrt", artifact=output.name, sha256=plan_sha256, precision=precision,
        source_onnx={"path": str(onnx_path), "sha256": sha256_file(onnx_path), "precision": precision},
        card=card, artifact_check=check, precision_check=precision_check_of(onnx_path),
        mixed_precision=mixed_precision_of(onnx_path),
        build_seconds=round(built.build_seconds, 3),
        versions=manifest_versions(("tensorrt", built.tensorrt_version), ("nvidia_driver", driver)),
        target={
            "tensorrt_version": built.tensorrt_version,
            "gpu": {"name": gpu_name, "compute_capability": capability},
            "batch_profile": {"min": low, "opt": opt, "max": high},
            "plan_version": format_version(built.plan_version) if built.plan_version else None,
            "cuda_version": torch.version.cuda,
            "layer_precisions": counts,
            "input": built.input.to_dict(),
            "output": built.output.to_dict(),
            "build_options": {**options.to_dict(), "strongly_typed": True, "tf32": built.tf32,
                              "timing_cache_status": built.timing_cache_status},
            "plan_sha256": plan_sha256,
        },
    )


class TensorRTTarget(Target):
    """A strongly typed TensorRT plan (.plan), built on this machine's GPU."""

    name = "tensorrt"

    def parse_options(self, given: dict[str, Any]) -> TensorRTBuildOptions:
        given = {k: v for k, v in given.items() if v is not None and v is not False}
        if "workspace_bytes" in given:
            given = {**given, "workspace_bytes": parse_byte_size(given["workspace_bytes"])}
        return TensorRTBuildOptions(**given).validated()

    def usable(self, device: str | None = None) -> tuple[bool, str]:
        if device is not None and not device.startswith("cuda"):
            return False, "TensorRT needs an NVIDIA GPU; use --device cuda"
        return tensorrt_usable()

    def build(self, request: TargetRequest) -> BuildResult:
        precision = "fp32" if request.precision == "bf16" else request.precision
        result = build_tensorrt_engine(request.model, request.output, precision=precision,
                                       options=request.options, card=request.card)
        layers = ", ".join(f"{k} {v}" for k, v in sorted(result.layer_precisions.items()))
        row = f"{layers} (TensorRT {result.tensorrt_version}, {result.gpu_name})"
        assert result.manifest is not None
        return BuildResult(self.name, result.plan_path, result.manifest_path, result.manifest,
                           summary=[("engine layers", row)], warnings=list(result.warnings),
                           details=result.to_dict())
