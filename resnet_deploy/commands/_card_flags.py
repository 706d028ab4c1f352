"""The preprocessing flags for an ONNX model without a model card (build-engine, validate; import-onnx
writes them into the file instead). They describe what the graph cannot: how its input was normalized,
resized and cropped, and the names of its classes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from resnet_deploy.classifier_card import CardFlags

_PANEL = "Card-less ONNX (a model exported elsewhere)"
MeanOption = Annotated[str | None, typer.Option(
    "--mean", help="Normalization mean r,g,b (0-1 scale), for an ONNX without a model card.",
    rich_help_panel=_PANEL)]
StdOption = Annotated[str | None, typer.Option(
    "--std", help="Normalization std r,g,b (0-1 scale), for an ONNX without a model card.", rich_help_panel=_PANEL)]
InputSizeOption = Annotated[int | None, typer.Option(
    "--input-size", help="Crop size fed to the network (default: the graph's).", rich_help_panel=_PANEL)]
ResizeSizeOption = Annotated[int | None, typer.Option(
    "--resize-size", help="Shorter-side resize before the crop (default and 0: none).", rich_help_panel=_PANEL)]
InterpolationOption = Annotated[str | None, typer.Option(
    "--interpolation", help="bilinear (default), bicubic or nearest.", rich_help_panel=_PANEL)]
ClassesOption = Annotated[str | None, typer.Option(
    "--classes", help="Comma-separated class names (default: class_0, class_1 and so on).", rich_help_panel=_PANEL)]
ClassesFromOption = Annotated[Path | None, typer.Option(
    "--classes-from", help="Read class names from an ImageFolder tree.", rich_help_panel=_PANEL)]


def card_flags(mean: str | None, std: str | None, input_size: int | None, resize_size: int | None,
               interpolation: str | None, classes: str | None, classes_from: Path | None) -> CardFlags | None:
    """The flags as one value; None when none was given."""
    from resnet_deploy.classifier_card import CardFlags
    from resnet_deploy.commands._options import parse_class_names, parse_floats3

    names = parse_class_names(classes, classes_from)
    flags = CardFlags(mean=parse_floats3(mean, "--mean"), std=parse_floats3(std, "--std"), input_size=input_size,
                      resize_size=resize_size, interpolation=interpolation,
                      class_names=tuple(names) if names is not None else None)
    return flags if flags.given() else None
