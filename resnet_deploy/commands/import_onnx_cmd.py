"""`resnet-deploy import-onnx`: any image-classifier ONNX → a cleaned copy carrying a model card."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from resnet_deploy.commands._card_flags import with_card_flags
from resnet_deploy.commands._options import JsonOption
from resnet_deploy.commands._output import emit_json, info
from resnet_deploy.errors import UsageError
from resnet_deploy.paths import check_io

if TYPE_CHECKING:
    from resnet_deploy.foreign.card import CardFlags


@with_card_flags
def import_onnx(
    source: Annotated[Path, typer.Argument(help="An image-classifier ONNX: one NCHW float input, one [N, C] output.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The cleaned copy with its card (.onnx).")],
    flags: CardFlags | None = None,  # the card-less preprocessing flags (`with_card_flags`), written into the card
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
    from resnet_deploy.foreign.card import CardFlags
    from resnet_deploy.foreign.card import import_onnx as run_import

    check_io(inputs=[source], outputs=[("--output", output)])
    if output.suffix.lower() != ".onnx":
        raise UsageError(f"--output {output}: expected an .onnx file")
    flags = flags or CardFlags()
    result = run_import(source, output, mean=flags.mean, std=flags.std, input_size=flags.input_size,
                        resize_size=flags.resize_size, interpolation=flags.interpolation,
                        class_names=list(flags.class_names) if flags.class_names is not None else None,
                        name=name, dataset=dataset)
    if json_output:
        emit_json(result.to_dict())
        return
    info(f"{source}: {result.io.describe()}")
    for line in result.clean.changes:
        info(f"  {line}")
    info(f"wrote {output} ({result.card.num_classes} classes, {result.card.preprocessing.describe()}; "
         f"max |logit diff| vs the original {result.clean.max_abs_diff:.2g})")
