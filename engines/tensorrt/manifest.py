"""The manifest beside a TensorRT plan (`model.fp16.plan` → `model.fp16.plan.json`), and the staleness check.

A plan is tied to the TensorRT version and the GPU that built it. The manifest records both (with the
precision, the realized per-layer precisions, the batch profile, the build options, the source ONNX
hash and the model card), and `check_compatible` refuses a plan that this machine cannot load, with a
message saying what to rebuild, before TensorRT fails with a less helpful one.

Rules, from NVIDIA's "Version Compatibility" (10.x) and "Engine Compatibility" (11.x) pages:
https://docs.nvidia.com/deeplearning/tensorrt/10.16.1/inference-library/version-compatibility.html
https://docs.nvidia.com/deeplearning/tensorrt/11.1.0/inference-library/engine-compatibility.html
— by default a plan loads only on the exact TensorRT version and the same kind of GPU that built it;
VERSION_COMPATIBLE plans load on later TensorRT versions of the same major version, and across major
versions only 8 → 10 and 10 → 11 (the 11.4 support matrix; never 11 → 10); hardware level
AMPERE_PLUS plans load on any compute capability ≥ 8.0, SAME_COMPUTE_CAPABILITY on the same one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engines.base import EngineError, EngineInputError
from engines.tensorrt.support import (
    PLAN_HEADER_SIZE,
    cross_major_rule,
    format_version,
    header_version,
    load_compatible,
    normalize_hardware_compatibility,
    parse_version,
    read_plan_version,
)

MANIFEST_FORMAT = "resnet-deploy/tensorrt-engine"
MANIFEST_FORMAT_VERSION = 1
REBUILD_HINT = "rebuild it on this machine with `resnet-deploy build-engine --target tensorrt`"


class StaleEngineError(EngineError):
    """The plan was built for another TensorRT version or another GPU."""

    exit_code = 2


class ManifestError(EngineInputError):
    """The manifest beside a plan is missing or malformed."""


def manifest_path(plan_path: str | Path) -> Path:
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".json")


@dataclass
class EngineManifest:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    precision: str  # what the source ONNX carries: fp32, fp16, int8
    batch_profile: dict[str, int] = field(default_factory=dict)  # {"min", "opt", "max"}
    plan_version: str | None = None  # read back from the plan header
    cuda_version: str | None = None
    layer_precisions: dict[str, int] = field(default_factory=dict)  # compute layers per realized precision
    precision_check: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)  # {"name", "shape", "dtype"}
    output: dict[str, Any] = field(default_factory=dict)
    build_options: dict[str, Any] = field(default_factory=dict)
    source_onnx: dict[str, Any] = field(default_factory=dict)  # {"path", "sha256"}
    plan_sha256: str | None = None
    card: dict[str, Any] | None = None
    build_seconds: float | None = None
    built_at: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)

    @property
    def version_compatible(self) -> bool:
        return bool(self.build_options.get("version_compatible", False))

    @property
    def hardware_compatibility(self) -> str:
        return normalize_hardware_compatibility(self.build_options.get("hardware_compatibility") or "none")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        gpu = {"name": data.pop("gpu_name"), "compute_capability": data.pop("compute_capability")}
        return {"format": MANIFEST_FORMAT, "format_version": MANIFEST_FORMAT_VERSION,
                "tensorrt_version": data.pop("tensorrt_version"), "gpu": gpu, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "manifest") -> EngineManifest:
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{source}: not a resnet-deploy TensorRT engine manifest")
        if int(data.get("format_version", 0)) > MANIFEST_FORMAT_VERSION:
            raise ManifestError(f"{source}: manifest format {data.get('format_version')} is newer than this "
                                "resnet-deploy understands; upgrade resnet-deploy")
        gpu = data.get("gpu") or {}
        try:
            manifest = cls(
                tensorrt_version=str(data["tensorrt_version"]),
                gpu_name=str(gpu["name"]),
                compute_capability=str(gpu["compute_capability"]),
                precision=str(data["precision"]),
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{source}: manifest lacks {exc}") from None
        for name in ("batch_profile", "plan_version", "cuda_version", "layer_precisions", "precision_check",
                     "input", "output", "build_options", "source_onnx", "plan_sha256", "card", "build_seconds",
                     "built_at", "versions"):
            if data.get(name) is not None:
                setattr(manifest, name, data[name])
        return manifest


def read_manifest(plan_path: str | Path) -> EngineManifest:
    """The manifest beside `plan_path`; a missing or unreadable one is a clear error."""
    path = manifest_path(plan_path)
    if not path.is_file():
        raise ManifestError(
            f"{plan_path}: no manifest {path.name} beside it (it records the TensorRT version, GPU, precision "
            "and preprocessing); build engines with `resnet-deploy build-engine --target tensorrt`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from None
    return EngineManifest.from_dict(data, source=str(path))


@dataclass(frozen=True)
class RunningEnvironment:
    """What would load the plan here."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]


def parse_compute_capability(text: str | tuple[int, int]) -> tuple[int, int]:
    if isinstance(text, tuple):
        return int(text[0]), int(text[1])
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)


def stale_reasons(manifest: EngineManifest, env: RunningEnvironment,
                  plan_version: tuple[int, ...] | None = None) -> list[str]:
    """Why this machine cannot load the plan (empty when it can)."""
    reasons: list[str] = []
    built = plan_version or parse_version(manifest.tensorrt_version)
    running = parse_version(env.tensorrt_version)
    if plan_version is not None:  # the header stores each part in one byte
        running = header_version(running)
    if not load_compatible(built, running, version_compatible=manifest.version_compatible):
        reason = f"it was built with TensorRT {format_version(built)} but TensorRT {env.tensorrt_version} is installed"
        if running < built:
            reason += " (a plan never loads on an older TensorRT)"
        elif manifest.version_compatible:
            reason += (f" (version-compatible plans load on later versions of the same major version, and across "
                       f"major versions only {cross_major_rule()})")
        else:
            reason += " (or build it with --version-compatible to load it on later TensorRT versions)"
        reasons.append(reason)
    built_cc = parse_compute_capability(manifest.compute_capability)
    cc = env.compute_capability
    level = manifest.hardware_compatibility
    here = f"this GPU is {env.gpu_name} (compute capability {cc[0]}.{cc[1]})"
    there = f"{manifest.gpu_name} (compute capability {manifest.compute_capability})"
    if level == "ampere_plus":
        if cc < (8, 0):
            reasons.append(f"it was built for Ampere-or-newer GPUs but {here}")
    elif cc != built_cc:
        reasons.append(f"it was built for {there} but {here} (or build it with --hardware-compatibility ampere+)")
    elif level == "none" and env.gpu_name != manifest.gpu_name:
        reasons.append(f"it was built for {there} but {here} (or build it with --hardware-compatibility same-cc)")
    return reasons


def trusted_plan_version(header: bytes, manifest: EngineManifest) -> tuple[int, ...] | None:
    """The plan version to check staleness against, or None to rely on the manifest (and on deserialization).

    The header layout is confirmed for ordinary plans only. A VERSION_COMPATIBLE plan embeds a lean runtime
    and its header is unverified: there the header counts only when it reads as the manifest's own version.
    An unreadable header never makes a plan "not a TensorRT plan": TensorRT's deserialization has the last word.
    """
    found = read_plan_version(header[:PLAN_HEADER_SIZE])
    if found is None or not manifest.version_compatible:
        return found
    recorded = header_version(parse_version(manifest.tensorrt_version))
    return found if found == recorded else None


def check_compatible(manifest: EngineManifest, env: RunningEnvironment, *, plan_path: str | Path,
                     plan_version: tuple[int, ...] | None = None) -> None:
    """Raise `StaleEngineError` naming what differs and what to rebuild when the plan cannot load here."""
    reasons = stale_reasons(manifest, env, plan_version)
    if reasons:
        raise StaleEngineError(f"{plan_path}: stale TensorRT engine: {'; '.join(reasons)}; {REBUILD_HINT}")
