"""What `inspect` reports about a model: architecture, size and cost, and the card's metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resnet_deploy.card import ModelCard
from resnet_deploy.models import count_macs, count_parameters, get_entry


@dataclass
class ModelSummary:
    arch: str
    family: str
    depth: int
    plain: bool
    params: int
    macs: int
    input_size: int
    num_classes: int
    card: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "family": self.family,
            "depth": self.depth,
            "plain": self.plain,
            "params": self.params,
            "macs": self.macs,
            "input_size": self.input_size,
            "num_classes": self.num_classes,
            "source": self.source,
            "card": self.card,
        }


def summarize(card: ModelCard, model: Any | None = None, source: str | None = None) -> ModelSummary:
    """Parameters and multiply-adds at the card's input size (builds the model if none is given). A card
    imported with a foreign ONNX (`import-onnx`) names no ResNet here: summarize the .onnx file instead."""
    from resnet_deploy.classifier_card import is_foreign_card
    from resnet_deploy.errors import UsageError

    if is_foreign_card(card):
        raise UsageError(f"{card.arch}: a classifier imported from a foreign ONNX has no PyTorch model here; "
                         "inspect its .onnx file (its graph gives the parameters)")
    entry = get_entry(card.arch)
    model = model if model is not None else card.build_model()
    return ModelSummary(
        arch=card.arch,
        family=entry.family.name,
        depth=entry.depth,
        plain=entry.plain,
        params=count_parameters(model),
        macs=count_macs(model, card.preprocessing.input_size),
        input_size=card.preprocessing.input_size,
        num_classes=card.num_classes,
        card=card.to_dict(),
        source=source,
    )
