"""The target contract, and the one place that says which targets are usable here and what `auto` picks.

A target compiles an ONNX model that already carries its precision (FP32, FP16-typed or Q/DQ INT8)
into an artifact for one runtime and writes the artifact's `Manifest` beside it. `build.py` calls
targets only through `Target.build`; build, bench and the demo ask `target_usable`/`resolve_target`.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from resnet_deploy.artifacts import MIXED_PRECISION_KEY, SUFFIXES, VERIFICATION_KEY, Manifest
from resnet_deploy.errors import BackendUnavailable, UsageError

if TYPE_CHECKING:
    import numpy as np

    from resnet_deploy.card import ModelCard

TARGET_NAMES = ("onnxruntime", "tensorrt", "openvino")
AUTO_ORDER = ("tensorrt", "openvino", "onnxruntime")  # what `auto` prefers, fastest first
_MODULES = {"onnxruntime": ("resnet_deploy.targets.onnxruntime", "OnnxRuntimeTarget"),
            "openvino": ("resnet_deploy.targets.openvino", "OpenVINOTarget"),
            "tensorrt": ("resnet_deploy.targets.tensorrt", "TensorRTTarget")}
_DISPLAY = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tensorrt": "TensorRT"}


@dataclass(frozen=True)
class TargetRequest:
    """What a target compiles, and into what."""

    model: Path  # the ONNX model carrying the precision (or the FP32 source)
    output: Path
    precision: str  # fp32 | fp16 | int8 | bf16 (bf16: OpenVINO's inference precision of the FP32 model)
    card: ModelCard
    device: str = "cpu"  # ONNX Runtime: the execution provider the artifact is optimized for
    check_images: np.ndarray | None = None  # real images to check the artifact on (None: random inputs)
    tensorrt: Any = None  # TensorRTBuildOptions (TensorRT only)


@dataclass
class BuildResult:
    """A built artifact. `summary` rows are what the target wants shown; `details` is its own result, for JSON."""

    target: str
    path: Path
    manifest_path: Path
    manifest: Manifest
    summary: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.details


class Target(ABC):
    name: ClassVar[str]

    @property
    def suffixes(self) -> tuple[str, ...]:
        return SUFFIXES[self.name]

    def default_suffix(self, device: str = "cpu") -> str:
        """What `build` appends to `<model>.<precision>` when no output is named."""
        return self.suffixes[0]

    @abstractmethod
    def usable(self, device: str | None = None) -> tuple[bool, str]:
        """Whether this target can build here (device None), or run on `device`; the reason either way."""

    @abstractmethod
    def build(self, request: TargetRequest) -> BuildResult:
        """Compile `request.model` into `request.output` and write its manifest."""


def get_target(name: str) -> Target:
    if name not in _MODULES:
        raise UsageError(f"--target must be one of auto, {', '.join(TARGET_NAMES)}, got {name!r}")
    module, cls = _MODULES[name]
    return getattr(importlib.import_module(module), cls)()


def target_usable(name: str, device: str | None = None) -> tuple[bool, str]:
    """(usable, reason) of a target; a target whose own module cannot import is not usable, with the reason."""
    try:
        target = get_target(name)
    except ImportError as exc:
        return False, f"the {_DISPLAY[name]} target is not installed ({exc})"
    return target.usable(device)


def resolve_target(name: str, device: str = "cpu") -> tuple[Target, str]:
    """(target, why): `auto` prefers TensorRT, then OpenVINO, then ONNX Runtime; an explicit one must be usable."""
    if name != "auto":
        target = get_target(name)
        usable, why = target_usable(name, device if name == "onnxruntime" else None)
        if not usable:
            raise BackendUnavailable(f"TensorRT is not available ({why})" if name == "tensorrt" else why)
        return target, "asked for"
    reasons = []
    for candidate in AUTO_ORDER:
        usable, why = target_usable(candidate, device if candidate == "onnxruntime" else None)
        if usable:
            if candidate == "tensorrt":
                return get_target(candidate), "auto: TensorRT and a CUDA GPU are usable"
            tail = f"; {why}" if why else ""
            return get_target(candidate), "auto: " + "; ".join(reasons) + tail
        reasons.append(f"{_DISPLAY[candidate]} is not usable ({why})")
    raise BackendUnavailable("no target is usable here: " + "; ".join(reasons))


def precision_check_of(model: Path) -> dict[str, Any] | None:
    """The precision model's own check against FP32, as recorded in its ONNX metadata (None for FP32)."""
    return _metadata_json(model, VERIFICATION_KEY)


def mixed_precision_of(model: Path) -> dict[str, Any] | None:
    """An INT8 model's mixed-precision record (layers kept out of INT8, the search's steps), or None."""
    return _metadata_json(model, MIXED_PRECISION_KEY)


def _metadata_json(model: Path, key: str) -> dict[str, Any] | None:
    from resnet_deploy.artifacts import Artifact

    text = Artifact(model).metadata.get(key)
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"text": text}
