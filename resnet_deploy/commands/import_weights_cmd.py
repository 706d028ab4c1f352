"""`resnet-deploy import-weights`: foreign PyTorch weights → a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_deploy.commands._options import (
    ArchOption,
    DepthOption,
    JsonOption,
    NumClassesOption,
    RenameOption,
    parse_class_names,
    parse_floats3,
    resolve_arch,
)
from resnet_deploy.commands._output import emit_json, info
from resnet_deploy.errors import UsageError
from resnet_deploy.paths import check_io


def import_weights(
    source: Annotated[Path, typer.Argument(
        help="Foreign weights: .pth/.pt/.th state_dict, timm checkpoint, Lightning .ckpt or plain .safetensors.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The model card to write (.safetensors).")],
    depth: DepthOption = None,
    arch: ArchOption = None,
    num_classes: NumClassesOption = None,
    rename: RenameOption = None,
    classes: Annotated[str | None, typer.Option("--classes", help="Comma-separated class names.")] = None,
    classes_from: Annotated[
        Path | None, typer.Option("--classes-from", help="Read class names from an ImageFolder tree.")
    ] = None,
    mean: Annotated[str | None, typer.Option("--mean", help="Normalization mean r,g,b (0-1 scale).")] = None,
    std: Annotated[str | None, typer.Option("--std", help="Normalization std r,g,b (0-1 scale).")] = None,
    input_size: Annotated[int | None, typer.Option("--input-size", help="Crop size fed to the network.")] = None,
    resize_size: Annotated[
        int | None, typer.Option("--resize-size", help="Shorter-side resize before the crop (0: none).")
    ] = None,
    interpolation: Annotated[str | None, typer.Option("--interpolation", help="bilinear or bicubic.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Name of the data set the weights fit.")] = None,
    use_ema: Annotated[
        bool, typer.Option("--use-ema", help="Take a timm checkpoint's EMA weights (state_dict_ema).")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Make a model card from foreign weights.

    Foreign PyTorch weights, loaded safely and checked strictly.
    """
    import dataclasses

    from resnet_deploy.card import save_card
    from resnet_deploy.checkpoints import load_model, parse_renames

    check_io(inputs=[source], outputs=[("--output", output)])
    if output.suffix.lower() != ".safetensors":
        raise UsageError(f"--output {output}: a model card is a .safetensors file")
    class_names = parse_class_names(classes, classes_from)
    name = resolve_arch(depth, arch)
    loaded = load_model(source, arch=name, num_classes=num_classes, class_names=class_names,
                        renames=parse_renames(rename or []), use_ema=use_ema)
    card = loaded.card
    for note in loaded.notes:
        info(f"{source}: {note}")
    if loaded.kind != "foreign":
        info(f"{source} already carries a model card; its metadata is kept and overridden only by flags")
    pre = card.preprocessing
    if interpolation is not None and interpolation not in ("bilinear", "bicubic", "nearest"):
        raise UsageError(f"--interpolation must be bilinear, bicubic or nearest, got {interpolation!r}")
    pre = dataclasses.replace(
        pre,
        mean=parse_floats3(mean, "--mean") or pre.mean,
        std=parse_floats3(std, "--std") or pre.std,
        input_size=input_size or pre.input_size,
        resize_size=(None if resize_size == 0 else resize_size) if resize_size is not None else pre.resize_size,
        interpolation=interpolation or pre.interpolation,
    )
    if any(s <= 0 for s in pre.std):
        raise UsageError("--std values must be positive")
    card = dataclasses.replace(card, preprocessing=pre, dataset=dataset or card.dataset)
    save_card(output, loaded.model, card)
    result = {"output": str(output), "arch": card.arch, "num_classes": card.num_classes,
              "source_sha256": loaded.source_sha256, "preprocessing": pre.to_dict(), "notes": loaded.notes}
    if json_output:
        emit_json(result)
    else:
        info(f"wrote {output} ({card.arch}, {card.num_classes} classes, {pre.describe()})")
