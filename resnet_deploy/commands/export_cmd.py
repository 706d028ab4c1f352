"""`resnet-deploy export`: write a verified ONNX model (BatchNorm folded, card in the metadata)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from resnet_deploy.commands._options import (
    ArchOption,
    CheckpointOption,
    DepthOption,
    JsonOption,
    NumClassesOption,
    OutputOption,
    RenameOption,
    resolve_arch,
)
from resnet_deploy.commands._output import emit_json, info, stdout, warn
from resnet_deploy.errors import UsageError
from resnet_deploy.paths import check_io, require_writable_folder

REAL_IMAGE_COUNT = 16  # a few real images on top of the random inputs


def export(
    depth: DepthOption = None,
    arch: ArchOption = None,
    checkpoint: CheckpointOption = None,
    num_classes: NumClassesOption = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (default 20; 18 or newer).")] = None,
    batch: Annotated[
        str, typer.Option("--batch", help="'dynamic' (default) or a fixed batch size N baked into the graph.")
    ] = "dynamic",
    tolerance: Annotated[
        float,
        typer.Option("--tolerance", help="Max |logit difference| ORT vs PyTorch (absolute; relative to the "
                                         "logit scale for random weights)."),
    ] = 1e-4,
    rename: RenameOption = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Labelled images for the real-image check (default: the card's dataset "
                                    "when it is a folder here)."),
    ] = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip the ONNX Runtime vs PyTorch check (latency work only).")
    ] = False,
    output: OutputOption = None,
    json_output: JsonOption = False,
) -> None:
    """Export a model to ONNX and verify it.

    Verified against PyTorch in ONNX Runtime; fails, writing nothing, if it differs.
    """
    from resnet_deploy.checkpoints import load_model, parse_renames, random_model
    from resnet_deploy.export import default_output_path, export_onnx

    check_io(inputs=[checkpoint], outputs=[("--output", output)])
    batch_size = parse_batch(batch)
    renames = parse_renames(rename or [])
    if renames and checkpoint is None:
        raise UsageError("--rename applies to the keys of --checkpoint weights; no --checkpoint was given")
    name = resolve_arch(depth, arch, required=checkpoint is None)
    if checkpoint is None:
        assert name is not None
        loaded = random_model(name, num_classes=num_classes)
        warn(f"no --checkpoint: exporting {name} with RANDOM weights (fine for latency work, useless for accuracy)")
    else:
        loaded = load_model(checkpoint, arch=name, num_classes=num_classes, renames=renames)
    target = output or default_output_path(loaded.card.arch)
    require_writable_folder(target)
    if no_verify:
        if data is not None:
            raise UsageError("--data gives images to verify on; it cannot go with --no-verify")
        warn("--no-verify: the ONNX model is NOT checked against PyTorch")
    images = None if no_verify else real_images(loaded.card, data)
    info(f"exporting {loaded.card.arch} → {target} (opset {opset or 'default'}, batch {batch})")
    result = export_onnx(loaded, target, opset=opset, batch=batch_size, verify=not no_verify, tolerance=tolerance,
                         real_images=images)
    if json_output:
        emit_json(result.to_dict())
        return
    print_result(result)


def parse_batch(text: str) -> int | None:
    if text.strip().lower() == "dynamic":
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--batch expects 'dynamic' or a positive integer, got {text!r}") from None
    if value < 1:
        raise UsageError(f"--batch expects 'dynamic' or a positive integer, got {value}")
    return value


def real_images(card: Any, data: Path | None) -> Any:
    """A few preprocessed real images (NCHW float32) from --data or the card's dataset folder, else None."""
    import numpy as np

    from resnet_deploy.data import check_classes, eval_transform, open_dataset, stratified_indices

    folder = data
    if folder is None and card.dataset and Path(card.dataset).is_dir():
        folder = Path(card.dataset)
    if folder is None:
        return None
    dataset = open_dataset(folder)
    check_classes(dataset, card.class_names, card.arch)
    transform = eval_transform(card.preprocessing)
    indices = stratified_indices(dataset.labels, REAL_IMAGE_COUNT)
    info(f"verifying on {len(indices)} real images from {dataset.describe()}")
    return np.stack([transform(dataset.load(i)).numpy() for i in indices]).astype(np.float32)


def print_result(result: Any) -> None:
    table = Table(title=f"{result.path}", title_justify="left")
    for column in ("inputs", "batch", "max |Δ logit|", "allowed", "top-1 agreement", "result"):
        table.add_column(column)
    verification = result.verification
    if verification is None:
        stdout.print(f"{result.path}: {result.arch}, opset {result.opset}, NOT verified (--no-verify)", markup=False)
        return
    for c in verification.comparisons:
        table.add_row(c.inputs, str(c.batch_size), f"{c.max_abs_diff:.3g}", f"{c.allowed:.3g}",
                      f"{c.agreement:.1f}%", "ok" if c.passed else ("FAILED (inf/NaN)" if c.non_finite else "FAILED"))
    stdout.print(table)
    shape = "x".join(str(d) for d in result.input_shape)
    nodes = sum(result.node_counts.values())
    stdout.print(
        f"{result.arch}: opset {result.opset}, input {result.spec.input_name}[{shape}] → {result.spec.output_name}, "
        f"{nodes} nodes, {result.size_bytes / 1e6:.1f} MB; tolerance {verification.tolerance:g} "
        f"({verification.mode}), needed {verification.needed_tolerance:.3g}",
        markup=False,
    )
