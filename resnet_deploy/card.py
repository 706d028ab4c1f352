"""Model cards: weights in a `.safetensors` file whose metadata says how to use them.

The card carries everything a later step needs so nothing is guessed from a flag default:
architecture and options, classes, the preprocessing contract, the data set, metrics and lineage.
It is stored as one JSON string under the metadata key ``resnet_deploy.card``; safetensors metadata
is a flat ``str → str`` map.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from resnet_deploy import __version__
from resnet_deploy.atomic import atomic_path
from resnet_deploy.errors import UsageError
from resnet_deploy.metadata_keys import CARD_KEY as CARD_METADATA_KEY  # defined once, below both
from resnet_deploy.models import FamilyDefaults, get_entry
from resnet_deploy.versions import library_versions

CARD_FORMAT_VERSION = 1
# What a card may promise: sizes a ResNet can take (the CIFAR nets need 8 px for their three stages; beyond
# 4096 px one image is already ~200 MB of float32) and the resize modes the eval transform knows.
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 4096
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact")


@dataclass(frozen=True)
class Preprocessing:
    """The evaluation transform: resize the shorter side, centre-crop, scale to [0, 1], normalize."""

    input_size: int
    resize_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @classmethod
    def for_family(cls, family: FamilyDefaults) -> Preprocessing:
        return cls(family.input_size, family.resize_size, family.mean, family.std, family.interpolation)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            input_size=int(data["input_size"]),
            resize_size=None if data.get("resize_size") in (None, "", "none") else int(data["resize_size"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", "bilinear")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    def problems(self) -> list[str]:
        """What is wrong with this contract (empty when it can be used)."""
        found = []
        for name, size in (("input_size", self.input_size), ("resize_size", self.resize_size)):
            if size is not None and not (isinstance(size, int) and MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE):
                found.append(f"{name} {size!r} is outside {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels")
        if len(self.mean) != 3 or not all(math.isfinite(v) for v in self.mean):
            found.append(f"mean {list(self.mean)} is not three finite numbers (r, g, b)")
        if len(self.std) != 3 or not all(math.isfinite(v) and v > 0 for v in self.std):
            found.append(f"std {list(self.std)} is not three positive numbers (r, g, b)")
        if self.interpolation not in INTERPOLATIONS:
            found.append(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        return found

    def describe(self) -> str:
        resize = f"resize {self.resize_size}, " if self.resize_size else ""
        mean = ", ".join(f"{v:.4f}" for v in self.mean)
        std = ", ".join(f"{v:.4f}" for v in self.std)
        return f"{resize}centre crop {self.input_size}, mean ({mean}), std ({std}), {self.interpolation}"


@dataclass
class ModelCard:
    arch: str
    num_classes: int
    class_names: list[str]
    preprocessing: Preprocessing
    arch_options: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def default_for(
        cls, arch: str, *, num_classes: int | None = None, class_names: list[str] | None = None, **options: Any
    ) -> ModelCard:
        """A card for `arch` with its family's preprocessing and placeholder class names."""
        family = get_entry(arch).family
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise UsageError(f"{len(class_names)} class names given for {num_classes} classes")
        n = len(class_names) if class_names is not None else (num_classes or family.num_classes)
        names = class_names if class_names is not None else [f"class_{i}" for i in range(n)]
        return cls(arch=arch, num_classes=n, class_names=list(names),
                   preprocessing=Preprocessing.for_family(family), arch_options=dict(options))

    def check(self) -> ModelCard:
        """This card, if every later step can trust it; else a UsageError listing what is wrong. Called when
        a card is written and when it is read: a card with a negative std validated with silently wrong
        accuracy, one with input size 100000 tried to allocate 100 GB."""
        problems = self.preprocessing.problems()
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            problems.append(f"num_classes {self.num_classes!r} is not a positive integer")
        elif len(self.class_names) != self.num_classes:
            problems.append(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if problems:
            raise UsageError(f"invalid model card ({self.arch}): {'; '.join(problems)}")
        return self

    def build_model(self) -> torch.nn.Module:
        from resnet_deploy.models import create_model

        return create_model(self.arch, num_classes=self.num_classes, **self.arch_options)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        data["format_version"] = CARD_FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        try:
            return cls(
                arch=str(data["arch"]),
                num_classes=int(data["num_classes"]),
                class_names=[str(c) for c in data["class_names"]],
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                arch_options=dict(data.get("arch_options") or {}),
                dataset=data.get("dataset"),
                metrics=dict(data.get("metrics") or {}),
                recipe=dict(data.get("recipe") or {}),
                lineage=dict(data.get("lineage") or {}),
            ).check()
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise UsageError(f"malformed model card metadata ({exc})") from None

    def to_json(self) -> str:
        return json.dumps(self.check().to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str | os.PathLike[str] | None = None) -> ModelCard:
        """The card in `text`; `source` (the file it came from) is named in every error."""
        where = f"{source}: " if source is not None else ""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, or nesting past the recursion limit
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise UsageError(f"{where}model card metadata is not valid JSON ({reason}); the card is damaged: "
                             "re-export the model") from None
        if not isinstance(data, dict):
            raise UsageError(f"{where}model card metadata is a JSON {type(data).__name__}, not an object; the card "
                             "is damaged: re-export the model")
        try:
            return cls.from_dict(data)
        except UsageError as exc:
            raise UsageError(f"{where}{exc}") from None


def stamp_lineage(card: ModelCard, *, source_sha256: str | None = None, **extra: Any) -> ModelCard:
    """Record where the weights came from and with which library versions."""
    lineage = dict(card.lineage)
    if source_sha256 is not None:
        lineage["source_sha256"] = source_sha256
    lineage.update({"resnet_deploy": __version__, **library_versions("torch", "torchvision", imported=True)})
    lineage["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    lineage.update(extra)
    return dataclasses.replace(card, lineage=lineage)


def save_card(path: str | os.PathLike[str], model: torch.nn.Module, card: ModelCard) -> Path:
    """Write weights + card metadata atomically as safetensors."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    target = Path(path)
    with atomic_path(target) as tmp:
        save_file(state, str(tmp), metadata={CARD_METADATA_KEY: card.to_json(), "format": "pt"})
    return target


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise UsageError(f"{path}: not a readable safetensors file ({exc})") from None


def read_card(path: str | os.PathLike[str]) -> ModelCard | None:
    """The card stored in a safetensors file, or None for plain (foreign) safetensors weights."""
    metadata = read_safetensors_metadata(path)
    text = metadata.get(CARD_METADATA_KEY)
    return ModelCard.from_json(text, path) if text else None
