"""What `inspect` reports about a model: architecture, size and cost, and the card's metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
    source: str | None = None
    card: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # the fields, in order, are the JSON


def summarize(card: ModelCard, model: Any | None = None, source: str | None = None) -> ModelSummary:
    """Parameters and multiply-adds at the card's input size (builds the model if none is given). A card
    imported with a foreign ONNX (`import-onnx`) names no ResNet here: summarize the .onnx file instead."""
    from resnet_deploy.errors import UsageError
    from resnet_deploy.foreign.card import is_foreign_card

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


# --- the card's metadata, readably (inspect's table) ----------------------------------------------------------------

LONG_TEXT = 40  # a list of strings any longer than this (a schedule's notes) gets one row per string


def card_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows for the card's dataset, metrics, recipe and lineage: numbers to 4 significant digits,
    words instead of Python reprs, and each nested mapping (the recipe's schedule, the paper's recipe) on a row of
    its own, labelled with where it sits."""
    rows: list[tuple[str, str]] = []
    for key in ("dataset", "metrics", "recipe", "lineage"):
        value = card.get(key)
        if not value:
            continue
        rows += _mapping_rows(key, value) if isinstance(value, dict) else [(key, readable(value))]
    return rows


def _mapping_rows(label: str, mapping: dict[str, Any]) -> list[tuple[str, str]]:
    plain, nested, notes = [], [], []
    for key, value in mapping.items():
        # Keys in words (eval split); the lineage's keys are package names (resnet_deploy): kept as they are.
        words = str(key) if label == "lineage" else str(key).replace("_", " ")
        if isinstance(value, dict):
            nested += _mapping_rows(f"{label}: {words}", value)
        elif isinstance(value, list) and any(isinstance(v, str) and len(v) > LONG_TEXT for v in value):
            notes += [(f"{label}: {words}" if i == 0 else "", str(v)) for i, v in enumerate(value)]
        else:
            plain.append(f"{words} {readable(value)}")
    return ([(label, ", ".join(plain))] if plain else []) + nested + notes


def readable(value: Any) -> str:
    """One value as a person writes it: 60.45 (not 60.44568245125348), none, 4000/6000, yes/no."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "none"
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        return ("/" if numbers else ", ").join(readable(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{str(k).replace('_', ' ')} {readable(v)}" for k, v in value.items())
    return str(value)
