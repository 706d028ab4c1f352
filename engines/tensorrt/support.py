"""TensorRT 10.x / 11.x: importing it, telling the versions apart, and reading a plan without loading it.

Every difference between TensorRT 10 and 11 that this project meets lives in `version_plan()`; the
builder and the runtime ask it instead of testing versions themselves. The rest are pure functions
(version strings, the plan header, data-type names) that the unit tests exercise without TensorRT.

Documentation followed:

* 10.x Python API, `NetworkDefinitionCreationFlag` (STRONGLY_TYPED; EXPLICIT_BATCH ignored since 10.0):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
* 11.x migration, removed Python APIs (BuilderFlag.FP16/INT8/BF16/FP8/INT4, calibrators,
  `device_memory_size`) and the strong-typing pattern:
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-patterns.html
* Version compatibility (10.x page; 11.x "Engine Compatibility" page: 10 → 11 allowed, 11 → 10 never;
  the 11.4 support matrix: across major versions only 8 → 10 and 10 → 11):
  https://docs.nvidia.com/deeplearning/tensorrt/10.16.1/inference-library/version-compatibility.html
  https://docs.nvidia.com/deeplearning/tensorrt/11.1.0/inference-library/engine-compatibility.html
  https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/getting-started/support-matrix.html
* `ICudaEngine.device_memory_size_v2` exists from 10.1 (`getDeviceMemorySizeV2`); 11.x removed the old one.
* `DataType` members (FLOAT, HALF, BF16, INT8, INT32, INT64, BOOL, UINT8, FP8, INT4, FP4, E8M0) as
  bound in NVIDIA/TensorRT `python/src/infer/pyFoundationalTypes.cpp`; `trt.nptype` has no BF16/FP8,
  so the torch mapping is written here by hand.
* Plan header: trtexec's `--getPlanVersionOnly` (NVIDIA/TensorRT `samples/common/sampleEngines.cpp`,
  `printPlanVersion`): u32 tag 0x74727466, u32 serialization version 0, bytes 24..27 = version.
  Confirmed for ordinary plans only: a VERSION_COMPATIBLE plan embeds a lean runtime and its header is
  unverified, so callers treat an unreadable header as "unknown", never as "not a plan".
"""

from __future__ import annotations

import re
import struct
from collections import deque
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from engines.base import BackendUnavailableError

INSTALL_HINT = "pip install 'resnet-deploy[tensorrt]' on a Linux or Windows machine with an NVIDIA GPU"
#: strong typing is complete from 10.12; pyproject's tensorrt extra requires 10.13
MIN_VERSION = (10, 13)
#: version-compatible plans load on a later major version only for these (built, running) majors
CROSS_MAJOR_LOADS = frozenset({(8, 10), (10, 11)})

PLAN_TAG = 0x74727466
PLAN_HEADER_SIZE = 28
LOG_TAIL_LINES = 25


# --------------------------------------------------------------------------------------------------
# Versions and the per-version plan


def parse_version(text: str) -> tuple[int, ...]:
    """'10.13.3.9' → (10, 13, 3, 9); trailing non-numeric parts ('10.14.1.48.post1') are dropped."""
    parts: list[int] = []
    for piece in str(text).strip().split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    if not parts:
        raise ValueError(f"not a version: {text!r}")
    return tuple(parts)


def format_version(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)


@dataclass(frozen=True)
class VersionPlan:
    """What this project does differently on one TensorRT major version."""

    major: int
    #: network-creation flags that must exist and be set
    required_network_flags: tuple[str, ...]
    #: flags set when the binding still has them (11.x keeps STRONGLY_TYPED but ignores it)
    optional_network_flags: tuple[str, ...]
    #: BuilderFlag names this project must never set: weak-typing precision flags (an error together
    #: with STRONGLY_TYPED on 10.x, removed on 11.x)
    forbidden_builder_flags: tuple[str, ...]


_WEAK_TYPING_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4",
                      "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS")


def version_plan(version: tuple[int, ...]) -> VersionPlan:
    """The one place that knows how TensorRT 10 and 11 differ for this project."""
    major = version[0]
    if tuple(version[:2]) < MIN_VERSION:
        raise BackendUnavailableError(
            f"TensorRT is not available (TensorRT {format_version(version)} is installed; resnet-deploy needs "
            f"TensorRT {format_version(MIN_VERSION)} or newer: pip install -U 'resnet-deploy[tensorrt]')"
        )
    if major == 10:
        # Strong typing is opt-in on 10.x. EXPLICIT_BATCH is ignored since 10.0 and gone in 11: never referenced.
        return VersionPlan(10, ("STRONGLY_TYPED",), (), _WEAK_TYPING_FLAGS)
    # 11.x and later: always strongly typed; the flag may linger (ignored) or disappear.
    return VersionPlan(major, (), ("STRONGLY_TYPED",), _WEAK_TYPING_FLAGS)


def network_creation_flags(trt: Any, plan: VersionPlan) -> int:
    """The bit mask for `builder.create_network`, from the flag names the plan asks for."""
    enum = trt.NetworkDefinitionCreationFlag
    mask = 0
    for name in plan.required_network_flags:
        member = getattr(enum, name, None)
        if member is None:
            raise BackendUnavailableError(
                f"TensorRT is not available (this TensorRT {trt.__version__} lacks NetworkDefinitionCreationFlag."
                f"{name}; pip install -U 'resnet-deploy[tensorrt]')"
            )
        mask |= 1 << int(member)
    for name in plan.optional_network_flags:
        member = getattr(enum, name, None)
        if member is not None:
            mask |= 1 << int(member)
    return mask


def load_compatible(built: tuple[int, ...], running: tuple[int, ...], *, version_compatible: bool) -> bool:
    """Can a plan built by TensorRT `built` be deserialized by `running`?

    Without version compatibility the versions must match exactly (major, minor, patch, build). With
    it (8.6+ builders only), a later runtime of the same major version loads the plan, and across
    major versions only 8 → 10 and 10 → 11 (support matrix); an older runtime never does (11 → 10).
    """
    width = min(len(built), len(running))
    if not version_compatible:
        return built[:width] == running[:width]
    if tuple(built[:2]) < (8, 6) or running[:width] < built[:width]:
        return False
    return built[0] == running[0] or (built[0], running[0]) in CROSS_MAJOR_LOADS


def cross_major_rule() -> str:
    """The documented cross-major rule in words, for error messages."""
    return ", ".join(f"{a} → {b}" for a, b in sorted(CROSS_MAJOR_LOADS))


# --------------------------------------------------------------------------------------------------
# Importing TensorRT and checking the GPU


def probe_tensorrt() -> str | None:
    """None when TensorRT and a CUDA GPU are usable here, else the reason (for `TensorRT is not available (...)`)."""
    try:
        trt = _import_tensorrt()
    except BackendUnavailableError as exc:
        return str(exc.args[0])
    try:
        version_plan(parse_version(trt.__version__))
    except BackendUnavailableError as exc:
        return _inner_reason(str(exc))
    return cuda_problem()


def _inner_reason(message: str) -> str:
    prefix = "TensorRT is not available ("
    return message[len(prefix):-1] if message.startswith(prefix) and message.endswith(")") else message


def _import_tensorrt() -> ModuleType:
    try:
        import tensorrt  # optional backend, imported on first use only
    except Exception as exc:  # ImportError, or OSError when its shared libraries are missing
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendUnavailableError(f"{INSTALL_HINT}; import tensorrt failed: {detail}") from None
    return tensorrt


def load_tensorrt() -> ModuleType:
    """Import TensorRT (10 or newer) or raise `BackendUnavailableError("TensorRT is not available (...)")`."""
    try:
        trt = _import_tensorrt()
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"TensorRT is not available ({exc.args[0]})") from None
    version_plan(parse_version(trt.__version__))  # refuses 8.x / 9.x with the same wording
    return trt


def cuda_problem() -> str | None:
    """Why torch cannot give TensorRT a CUDA device here, or None."""
    try:
        import torch
    except Exception as exc:  # pragma: no cover - torch is a core dependency
        return f"torch is needed for the device buffers and could not be imported ({exc})"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build; install a CUDA build of torch"
    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        return "no CUDA GPU is visible (torch.cuda.is_available() is False); TensorRT needs an NVIDIA GPU and driver"
    return None


def require_cuda_torch() -> ModuleType:
    problem = cuda_problem()
    if problem:
        raise BackendUnavailableError(f"TensorRT is not available ({problem})")
    import torch

    return torch


def device_index(device: str) -> int:
    """'cuda' → 0, 'cuda:1' → 1; anything else is refused (TensorRT runs on CUDA devices only)."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device.strip())
    if not match:
        raise ValueError(f"TensorRT runs on CUDA devices only (device 'cuda' or 'cuda:N'), got {device!r}")
    return int(match.group(1) or 0)


# --------------------------------------------------------------------------------------------------
# The plan header


def read_plan_version(header: bytes) -> tuple[int, int, int, int] | None:
    """The TensorRT version a plan was built with, from its first 28 bytes; None if it is not a plan.

    Layout (trtexec --getPlanVersionOnly): little-endian u32 tag 0x74727466, u32 serialization version 0,
    then bytes 24..27 are major, minor, patch, build.
    """
    if len(header) < PLAN_HEADER_SIZE:
        return None
    tag, serialization = struct.unpack_from("<II", header, 0)
    if tag != PLAN_TAG or serialization != 0:
        return None
    major, minor, patch, build = header[24:28]
    return major, minor, patch, build


def header_version(version: tuple[int, ...]) -> tuple[int, ...]:
    """A version as the plan header stores it: four parts, one byte each (a build number 300 reads 44)."""
    return tuple(part & 0xFF for part in version[:4])


def device_memory_bytes(engine: Any) -> int | None:
    """The device memory one execution context needs: `device_memory_size_v2` (10.1+, the only one in 11.x),
    else the older `device_memory_size`; None when neither exists."""
    for name in ("device_memory_size_v2", "device_memory_size"):
        value = getattr(engine, name, None)
        if value is not None:
            return int(value)
    return None


# --------------------------------------------------------------------------------------------------
# Data types

#: TensorRT DataType member name → torch dtype attribute name (None: not usable as an I/O buffer here)
TRT_TO_TORCH_DTYPE: dict[str, str | None] = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
    "FP8": "float8_e4m3fn",  # TensorRT's FP8 is E4M3
    "INT4": None,  # packed sub-byte types: weights only, never an engine I/O buffer here
    "FP4": None,
    "E8M0": None,
}


def enum_name(member: Any) -> str:
    """'HALF' for `trt.DataType.HALF` (pybind enums have `.name`; `str()` gives 'DataType.HALF')."""
    name = getattr(member, "name", None)
    return str(name if isinstance(name, str) else member).split(".")[-1].upper()


def torch_dtype_name(trt_name: str) -> str:
    """The torch dtype name for a TensorRT DataType name; ValueError for types without a buffer mapping."""
    key = trt_name.split(".")[-1].upper()
    if key not in TRT_TO_TORCH_DTYPE:
        raise ValueError(f"unknown TensorRT data type {trt_name!r}")
    mapped = TRT_TO_TORCH_DTYPE[key]
    if mapped is None:
        raise ValueError(f"TensorRT data type {key} cannot be an engine input or output buffer")
    return mapped


# --------------------------------------------------------------------------------------------------
# Hardware compatibility levels

#: canonical name → `trt.HardwareCompatibilityLevel` member
HARDWARE_COMPATIBILITY_LEVELS = {
    "none": "NONE",
    "ampere_plus": "AMPERE_PLUS",
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
}
_HARDWARE_ALIASES = {
    "": "none", "none": "none", "off": "none",
    "ampere+": "ampere_plus", "ampere_plus": "ampere_plus", "ampere-plus": "ampere_plus",
    "same-cc": "same_compute_capability", "same_cc": "same_compute_capability",
    "same-compute-capability": "same_compute_capability", "same_compute_capability": "same_compute_capability",
}


def normalize_hardware_compatibility(text: str | None) -> str:
    """'ampere+' → 'ampere_plus', 'same-cc' → 'same_compute_capability', None/'none' → 'none'."""
    key = (text or "").strip().lower()
    if key not in _HARDWARE_ALIASES:
        raise ValueError(f"unknown hardware compatibility {text!r}; use none, ampere+ or same-cc")
    return _HARDWARE_ALIASES[key]


# --------------------------------------------------------------------------------------------------
# The logger


#: `trt.ILogger.Severity` members, most severe first
SEVERITY_ORDER = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")


def kept_severities(severity_enum: Any, min_severity: str = "INFO") -> frozenset[Any]:
    """The members of `trt.ILogger.Severity` at `min_severity` or worse (names missing in a binding are skipped)."""
    key = min_severity.upper()
    if key not in SEVERITY_ORDER:
        raise ValueError(f"unknown TensorRT log severity {min_severity!r}; use one of {', '.join(SEVERITY_ORDER)}")
    names = SEVERITY_ORDER[: SEVERITY_ORDER.index(key) + 1]
    return frozenset(getattr(severity_enum, name) for name in names if hasattr(severity_enum, name))


def make_logger(trt: Any, *, keep: int = 400, min_severity: str = "INFO") -> Any:
    """A `trt.ILogger` that keeps the last messages (`min_severity` and worse) for error reports, printing nothing.

    TensorRT calls `log` for every message, VERBOSE included (thousands per build); the severity is
    tested against a precomputed set before anything is formatted.
    """
    kept = kept_severities(trt.ILogger.Severity, min_severity)

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: deque[str] = deque(maxlen=keep)

        def log(self, severity: Any, msg: str) -> None:
            if severity not in kept:
                return
            self.lines.append(f"[{enum_name(severity)}] {msg}")

        def tail(self) -> list[str]:
            return list(self.lines)

        def warnings(self) -> list[str]:
            return [line for line in self.lines if line.startswith(("[WARNING]", "[ERROR]", "[INTERNAL_ERROR]"))]

    return CapturingLogger()


def format_log_tail(lines: list[str], limit: int = LOG_TAIL_LINES) -> str:
    if not lines:
        return "(TensorRT logged nothing)"
    tail = lines[-limit:]
    return "TensorRT log (last lines):\n  " + "\n  ".join(tail)
