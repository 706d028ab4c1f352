"""The target contract, and the one place that says which targets are usable here and what `auto` picks.

A target compiles an ONNX model that already carries its precision (FP32, FP16-typed or Q/DQ INT8)
into an artifact for one runtime and writes the artifact's `Manifest` beside it. `builder/` calls
targets only through `Target.build`; build, bench and the demo ask `target_usable`/`resolve_target`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from resnet_deploy import registry
from resnet_deploy.artifacts import MIXED_PRECISION_KEY, VERIFICATION_KEY, Manifest
from resnet_deploy.errors import BackendUnavailable, UsageError

if TYPE_CHECKING:
    import numpy as np

    from resnet_deploy.card import ModelCard

# Read from the backend declarations (registry/backends.py): the targets, what `auto` prefers (fastest first).
TARGET_NAMES = registry.target_names()
AUTO_ORDER = registry.auto_order()


@dataclass(frozen=True)
class TargetRequest:
    """What a target compiles, and into what."""

    model: Path  # the ONNX model carrying the precision (or the FP32 source)
    output: Path
    precision: str  # fp32 | fp16 | int8 | bf16 (bf16: OpenVINO's inference precision of the FP32 model)
    card: ModelCard
    device: str = "cpu"  # ONNX Runtime: the execution provider the artifact is optimized for
    check_images: np.ndarray | None = None  # real images to check the artifact on (None: random inputs)
    options: Any = None  # what this target's `parse_options` made of the target-only options (TensorRT's profile)


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
    def spec(self) -> registry.Backend:
        """This target's declaration: its suffixes, precisions, devices, extra, options."""
        return registry.backend(self.name)

    @property
    def suffixes(self) -> tuple[str, ...]:
        return self.spec.suffixes

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.spec.precisions

    def default_suffix(self, device: str = "cpu") -> str:
        """What `build` appends to `<model>.<precision>` when no output is named."""
        return self.suffixes[0]

    def parse_options(self, given: dict[str, Any]) -> Any:
        """The target-only build options (`Backend.options` keys) checked and parsed; None: it takes none."""
        return None

    @abstractmethod
    def usable(self, device: str | None = None) -> tuple[bool, str]:
        """Whether this target can build here (device None), or run on `device`; the reason either way."""

    @abstractmethod
    def build(self, request: TargetRequest) -> BuildResult:
        """Compile `request.model` into `request.output`, write its manifest, and return it in the result."""


def get_target(name: str) -> Target:
    if name not in TARGET_NAMES:
        raise UsageError(f"--target must be one of auto, {', '.join(TARGET_NAMES)}, got {name!r}")
    cls = registry.backend(name).target_class()
    assert cls is not None
    return cls()


def target_usable(name: str, device: str | None = None) -> tuple[bool, str]:
    """(usable, reason) of a target; a target whose own module cannot import is not usable, with the reason."""
    try:
        target = get_target(name)
    except ImportError as exc:
        return False, f"the {registry.backend(name).display} target is not installed ({exc})"
    return target.usable(device)


def _device_for(name: str, device: str) -> str | None:
    """The device a target is judged on: a target that runs on several devices on the one asked for; a
    single-device target (TensorRT: CUDA; OpenVINO: CPU) on whether it can build at all (None)."""
    return device if len(registry.backend(name).devices) > 1 else None


def resolve_target(name: str, device: str = "cpu") -> tuple[Target, str]:
    """(target, why): `auto` tries the declared `auto_rank` order (TensorRT, OpenVINO, ONNX Runtime); an
    explicit one must be usable."""
    if name != "auto":
        target = get_target(name)
        usable, why = target_usable(name, _device_for(name, device))
        if not usable:
            raise BackendUnavailable(f"{target.spec.display} is not available ({why})"
                                     if target.spec.devices == ("cuda",) else why)
        return target, "asked for"
    reasons = []
    for candidate in AUTO_ORDER:
        usable, why = target_usable(candidate, _device_for(candidate, device))
        if usable:
            spec = registry.backend(candidate)
            if spec.devices == ("cuda",):
                return get_target(candidate), f"auto: {spec.display} and a CUDA GPU are usable"
            tail = f"; {why}" if why else ""
            return get_target(candidate), "auto: " + "; ".join(reasons) + tail
        reasons.append(f"{registry.backend(candidate).display} is not usable ({why})")
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
