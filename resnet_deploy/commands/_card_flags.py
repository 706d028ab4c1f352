"""The preprocessing flags for an ONNX model without a model card (build-engine, validate; import-onnx
writes them into the file instead). They describe what the graph cannot: how its input was normalized,
resized and cropped, and the names of its classes."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import typer

if TYPE_CHECKING:
    from resnet_deploy.foreign.card import CardFlags

_PANEL = "Card-less ONNX (a model exported elsewhere)"


def _flag(kind: Any, flag: str, help: str) -> Any:
    """One preprocessing flag, shown in the card-less panel (its type admits None: not given)."""
    return Annotated[kind | None, typer.Option(flag, help=help, rich_help_panel=_PANEL)]


MeanOption = _flag(str, "--mean", "Normalization mean r,g,b (0-1 scale), for an ONNX without a model card.")
StdOption = _flag(str, "--std", "Normalization std r,g,b (0-1 scale), for an ONNX without a model card.")
InputSizeOption = _flag(int, "--input-size", "Crop size fed to the network (default: the graph's).")
ResizeSizeOption = _flag(int, "--resize-size", "Shorter-side resize before the crop (default and 0: none).")
InterpolationOption = _flag(str, "--interpolation", "bilinear (default), bicubic or nearest.")
ClassesOption = _flag(str, "--classes", "Comma-separated class names (default: class_0, class_1 and so on).")
ClassesFromOption = _flag(Path, "--classes-from", "Read class names from an ImageFolder tree.")


def card_flags(mean: str | None, std: str | None, input_size: int | None, resize_size: int | None,
               interpolation: str | None, classes: str | None, classes_from: Path | None) -> CardFlags | None:
    """The flags as one value; None when none was given."""
    from resnet_deploy.commands._options import parse_class_names, parse_floats3
    from resnet_deploy.foreign.card import CardFlags

    names = parse_class_names(classes, classes_from)
    flags = CardFlags(mean=parse_floats3(mean, "--mean"), std=parse_floats3(std, "--std"), input_size=input_size,
                      resize_size=resize_size, interpolation=interpolation,
                      class_names=tuple(names) if names is not None else None)
    return flags if flags.given() else None


FLAG_OPTIONS = {"mean": MeanOption, "std": StdOption, "input_size": InputSizeOption,
                "resize_size": ResizeSizeOption, "interpolation": InterpolationOption, "classes": ClassesOption,
                "classes_from": ClassesFromOption}


def with_card_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` with the seven flags above in place of its `flags` parameter, which receives them parsed as
    one `CardFlags` (None when none was given): every command that takes them declares them once, here."""
    from resnet_deploy.foreign.card import CardFlags

    hints = get_type_hints(command, include_extras=True, localns={"CardFlags": CardFlags})
    params = []
    for param in inspect.signature(command).parameters.values():
        if param.name == "flags":
            params += [inspect.Parameter(name, param.kind, default=None, annotation=option)
                       for name, option in FLAG_OPTIONS.items()]
        else:
            params.append(param.replace(annotation=hints.get(param.name, param.annotation)))

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        given = [kwargs.pop(name, None) for name in FLAG_OPTIONS]  # Typer passes every option by name
        return command(*args, flags=card_flags(*given), **kwargs)

    del run.__wrapped__  # Typer reads the signature below, with resolved annotations
    run.__signature__ = inspect.signature(command).replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run
