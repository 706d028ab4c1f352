"""The model card of a classifier ONNX built elsewhere: its preprocessing from flags (nothing is guessed),
the card itself (`arch` is the graph's name, the lineage says it is foreign), written into `metadata_props`
under the keys export uses so that every later step reads the file as if `resnet-deploy export` had written
it; the whole `import-onnx`; and, for build-engine, validate and bench on a card-less graph, the card the
flags make (`CardFlags`, `card_from_flags`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_deploy.artifact_checks import metadata_of
from resnet_deploy.atomic import sha256_file
from resnet_deploy.card import CARD_METADATA_KEY, ModelCard, Preprocessing, stamp_lineage
from resnet_deploy.errors import UsageError
from resnet_deploy.foreign.graph import (
    ClassifierIO,
    ImportResult,
    classifier_io,
    clean_and_check,
    load_onnx,
    save_onnx,
)

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # what --interpolation takes

# --- the model card --------------------------------------------------------------------------------------------


def preprocessing_for(
    io: ClassifierIO,
    *,
    mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None,
    input_size: int | None = None,
    resize_size: int | None = None,
    interpolation: str | None = None,
) -> Preprocessing:
    """The preprocessing contract from flags, checked against the graph; nothing is guessed."""
    if mean is None or std is None:
        raise UsageError("--mean and --std are needed: an ONNX graph does not say how its input was normalized "
                         "(ImageNet-trained: --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)")
    if any(s <= 0 for s in std):
        raise UsageError("--std values must be positive")
    if input_size is None:
        if io.input_size is None:
            raise UsageError("--input-size is needed: the graph's input height and width are dynamic")
        input_size = io.input_size
    elif io.input_size is not None and input_size != io.input_size:
        raise UsageError(f"--input-size {input_size} disagrees with the graph's fixed input {io.height}x{io.width}")
    if input_size <= 0:
        raise UsageError("--input-size must be positive")
    resize = None if not resize_size else int(resize_size)
    if resize is not None and resize < input_size:
        raise UsageError(f"--resize-size {resize} is smaller than the crop ({input_size}); 0 means no resize")
    interpolation = interpolation or "bilinear"
    if interpolation not in INTERPOLATIONS:
        raise UsageError(f"--interpolation must be {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    return Preprocessing(input_size, resize, tuple(mean), tuple(std), interpolation)  # type: ignore[arg-type]


def foreign_card(
    io: ClassifierIO,
    preprocessing: Preprocessing,
    *,
    name: str,
    class_names: list[str] | None = None,
    dataset: str | None = None,
    source_file: str | None = None,
    source_sha256: str | None = None,
) -> ModelCard:
    """A card for a classifier that was not built here: `arch` is its name (not a registered ResNet), and
    the lineage says it is a foreign ONNX with these I/O names."""
    if class_names is not None and len(class_names) != io.num_classes:
        raise UsageError(f"{len(class_names)} class names given; the graph's output has {io.num_classes} classes")
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(io.num_classes)]
    card = ModelCard(arch=name, num_classes=io.num_classes, class_names=names, preprocessing=preprocessing,
                     dataset=dataset)
    return stamp_lineage(card, source_sha256=source_sha256, source_file=source_file, foreign_onnx=True,
                         onnx_io={"input": io.input_name, "output": io.output_name, "opset": io.opset})


def card_metadata(card: ModelCard, io: ClassifierIO, *, source_sha256: str = "") -> dict[str, str]:
    """The same keys `resnet-deploy export` writes."""
    from resnet_deploy.export import card_metadata_props

    return card_metadata_props(card, source_sha256=source_sha256, batch=io.batch)


def attach_card(model: Any, card: ModelCard, io: ClassifierIO, *, source_sha256: str = "") -> None:
    """Write the card into `model.metadata_props` (in memory); other keys the model carries are kept."""
    props = card_metadata(card, io, source_sha256=source_sha256)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


# --- the whole import ------------------------------------------------------------------------------------------


def import_onnx(
    source: str | Path,
    output: str | Path,
    *,
    mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None,
    input_size: int | None = None,
    resize_size: int | None = None,
    interpolation: str | None = None,
    class_names: list[str] | None = None,
    name: str | None = None,
    dataset: str | None = None,
) -> ImportResult:
    """Read a classifier ONNX, clean it, verify it, attach a card and write it to `output` (never the source)."""
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve():
        raise UsageError(f"-o {output}: is the input; import-onnx writes a copy and never modifies its input")
    model = load_onnx(source)
    io = classifier_io(model, source)
    pre = preprocessing_for(io, mean=mean, std=std, input_size=input_size, resize_size=resize_size,
                            interpolation=interpolation)
    digest = sha256_file(source)
    card = foreign_card(io, pre, name=name or source.name.split(".")[0], class_names=class_names, dataset=dataset,
                        source_file=source.name, source_sha256=digest)
    had_card = any(p.key == CARD_METADATA_KEY for p in model.metadata_props)
    cleaned, report = clean_and_check(model, io, source, input_size=pre.input_size)
    if had_card:
        report.changes.append("replaced the model card the source carried")
    attach_card(cleaned, card, io, source_sha256=digest)
    save_onnx(cleaned, output)
    return ImportResult(source=source, output=output, io=io, card=card, clean=report)


# --- for build-engine / validate / bench on a card-less ONNX -------------------------------------------------


def is_foreign_card(card: ModelCard) -> bool:
    """A card made here for a graph built elsewhere: `card.arch` names no registered ResNet, so there is no
    PyTorch twin to build (bench's torch baseline, `card.build_model()`)."""
    return bool(card.lineage.get("foreign_onnx"))


def card_or_flags(
    model: Any,
    source: str | Path,
    *,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    input_size: int | None = None,
    resize_size: int | None = None,
    interpolation: str | None = None,
    class_names: list[str] | None = None,
) -> ModelCard:
    """The card an ONNX carries, or one from the preprocessing flags for a card-less graph (refused, naming
    the flags, when they are missing); the graph's classifier contract is checked either way."""
    io = classifier_io(model, source)
    text = metadata_of(model, source).get(CARD_METADATA_KEY)
    if text:
        return ModelCard.from_json(text, source)
    pre = preprocessing_for(io, mean=mean, std=std, input_size=input_size, resize_size=resize_size,
                            interpolation=interpolation)
    return foreign_card(io, pre, name=Path(source).name.split(".")[0], class_names=class_names,
                        source_file=Path(source).name)


@dataclass(frozen=True)
class CardFlags:
    """The preprocessing flags build-engine, validate and import-onnx take for a graph without a card."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    input_size: int | None = None
    resize_size: int | None = None
    interpolation: str | None = None
    class_names: tuple[str, ...] | None = None

    def given(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))


def has_card(model: Any) -> bool:
    return any(p.key == CARD_METADATA_KEY and p.value for p in model.metadata_props)


def card_from_flags(model: Any, source: str | Path, flags: CardFlags | None) -> ModelCard:
    """`card_or_flags` with the flags as one value (None: no flags given)."""
    flags = flags or CardFlags()
    return card_or_flags(model, source, mean=flags.mean, std=flags.std, input_size=flags.input_size,
                         resize_size=flags.resize_size, interpolation=flags.interpolation,
                         class_names=list(flags.class_names) if flags.class_names is not None else None)
