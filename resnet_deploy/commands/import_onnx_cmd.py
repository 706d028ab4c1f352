"""`resnet-deploy import-onnx`: any image-classifier ONNX → a cleaned copy carrying a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_deploy.commands._options import JsonOption, parse_class_names, parse_floats3
from resnet_deploy.commands._output import emit_json, info
from resnet_deploy.errors import UsageError
from resnet_deploy.paths import check_io


def import_onnx(
    source: Annotated[Path, typer.Argument(help="An image-classifier ONNX: one NCHW float input, one [N, C] output.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The cleaned copy with its card (.onnx).")],
    mean: Annotated[str | None, typer.Option("--mean", help="Normalization mean r,g,b (0-1 scale).")] = None,
    std: Annotated[str | None, typer.Option("--std", help="Normalization std r,g,b (0-1 scale).")] = None,
    input_size: Annotated[
        int | None, typer.Option("--input-size", help="Crop size fed to the network (default: the graph's).")
    ] = None,
    resize_size: Annotated[
        int | None, typer.Option("--resize-size", help="Shorter-side resize before the crop (default and 0: none).")
    ] = None,
    interpolation: Annotated[
        str | None, typer.Option("--interpolation", help="bilinear (default), bicubic or nearest.")
    ] = None,
    classes: Annotated[str | None, typer.Option("--classes", help="Comma-separated class names.")] = None,
    classes_from: Annotated[
        Path | None, typer.Option("--classes-from", help="Read class names from an ImageFolder tree.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The model's name in the card (default: the file name).")
    ] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Name of the data set the model fits.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Import a foreign classifier ONNX.

    Cleans it (BatchNorm folded, Identity dropped, constants folded, opset raised), verifies it against the
    original, and writes a copy with a model card; the input is never modified.
    """
    from resnet_deploy.classifier_card import import_onnx as run_import

    check_io(inputs=[source], outputs=[("--output", output)])
    if output.suffix.lower() != ".onnx":
        raise UsageError(f"--output {output}: expected an .onnx file")
    class_names = parse_class_names(classes, classes_from)
    result = run_import(source, output, mean=parse_floats3(mean, "--mean"), std=parse_floats3(std, "--std"),
                        input_size=input_size, resize_size=resize_size, interpolation=interpolation,
                        class_names=class_names, name=name, dataset=dataset)
    if json_output:
        emit_json(result.to_dict())
        return
    info(f"{source}: {result.io.describe()}")
    for line in result.clean.changes:
        info(f"  {line}")
    info(f"wrote {output} ({result.card.num_classes} classes, {result.card.preprocessing.describe()}; "
         f"max |logit diff| vs the original {result.clean.max_abs_diff:.2g})")
