"""`resnet-deploy inspect`: a model by name, a model card / checkpoint, an ONNX model (or ONNX Runtime artifact),
an OpenVINO IR (.xml, or its .bin) or a TensorRT plan (.plan/.engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from resnet_deploy import registry
from resnet_deploy.commands._options import ArchOption, DepthOption, JsonOption, NumClassesOption, resolve_arch
from resnet_deploy.commands._output import emit_json, stdout
from resnet_deploy.errors import UsageError
from resnet_deploy.paths import check_io


def run_self_check(artifact: Path) -> dict:
    """The artifact's self-check on this CPU, whatever class it was verified for; a failure raises CheckFailed."""
    from resnet_deploy.artifacts import backend_for, open_engine, read_manifest
    from resnet_deploy.precision.isa import this_cpu
    from resnet_deploy.selfcheck import verify_if_needed

    path = artifact.with_suffix(".xml") if artifact.suffix.lower() == ".bin" else artifact
    manifest = read_manifest(path) if registry.backend(backend_for(path)).verified_on_cpu else None
    if not manifest or not isinstance(manifest.get("self_check"), dict):
        raise UsageError(f"{path}: no self-check in its manifest (artifacts built by build-engine for ONNX Runtime or "
                         "OpenVINO carry one); rebuild it to get one")
    with open_engine(path) as engine:
        result = verify_if_needed(path, manifest, engine, force=True)
    assert result is not None
    return {**result.to_dict(), "cpu": this_cpu().cpu_class}


def inspect(
    artifact: Annotated[
        Path | None,
        typer.Argument(metavar="ARTIFACT", help="A model card or checkpoint (.safetensors/.pt/.pth), an .onnx "
                       "model, an OpenVINO IR (.xml/.bin) or a TensorRT plan (.plan/.engine)."),
    ] = None,
    depth: DepthOption = None,
    arch: ArchOption = None,
    num_classes: NumClassesOption = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Run the artifact's self-check on this CPU now (an ONNX Runtime or OpenVINO artifact: "
                         "the inputs and reference logits its manifest carries); exit 1 when it fails.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Describe a model or any artifact.

    Architecture, parameters, multiply-adds and model card of a model or checkpoint; inputs, outputs, precision,
    model card, source hash and versions of an ONNX model, OpenVINO IR or TensorRT plan (from its manifest).
    """
    from resnet_deploy.artifacts import ONNX_SUFFIXES
    from resnet_deploy.card import ModelCard
    from resnet_deploy.inspection.summary import card_rows, summarize

    check_io(inputs=[artifact])
    suffix = artifact.suffix.lower() if artifact is not None else ""
    spec = registry.backend_for_suffix(suffix)
    built = spec is not None and spec.manifest_format is not None  # an artifact a target builds (with a manifest)
    if artifact is not None and (built or suffix == ".bin"):  # .bin: an OpenVINO IR's weights
        if suffix in ONNX_SUFFIXES:
            from resnet_deploy.artifact_checks import check_onnx_external_data
            from resnet_deploy.inspection.onnx import summarize_onnx as summarize_file

            check_onnx_external_data(artifact)  # exit 2 naming the missing file, as validate/bench/build-engine do
        else:
            from resnet_deploy.inspection.artifact import summarize_artifact as summarize_file
        file_summary = summarize_file(artifact)
        checked = run_self_check(artifact) if verify else None
        if json_output:
            emit_json({**file_summary.to_dict(), **({"self_check_here": checked} if verify else {})})
        else:
            rows = file_summary.rows()
            if checked is not None:
                rows.append(("self-check", f"passed on this {checked['cpu']} CPU: max |Δ logit| "
                                           f"{checked['max_abs_diff']:.3g} ≤ {checked['tolerance']:.3g} on "
                                           f"{checked['inputs']} inputs"))
            print_rows(str(file_summary.path), rows)
        return
    if verify:
        raise UsageError("--verify runs the self-check of a built artifact (ONNX Runtime .onnx or OpenVINO .xml)")
    if artifact is not None:
        from resnet_deploy.checkpoints import load_model

        loaded = load_model(artifact, arch=resolve_arch(depth, arch, required=False), num_classes=num_classes)
        summary = summarize(loaded.card, loaded.model, source=str(artifact))
    else:
        name = resolve_arch(depth, arch)
        assert name is not None
        try:
            card = ModelCard.default_for(name, num_classes=num_classes)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
        summary = summarize(card)
    if json_output:
        emit_json(summary.to_dict())
        return
    table = Table(title=f"{summary.arch}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # a hash or a path folds, whole
    table.add_row("family", f"{summary.family} ({'plain, no shortcuts' if summary.plain else 'residual'})")
    table.add_row("depth", str(summary.depth))
    table.add_row("parameters", f"{summary.params:,} ({summary.params / 1e6:.2f} M)")
    table.add_row("multiply-adds", f"{summary.macs / 1e9:.3f} G at {summary.input_size}×{summary.input_size}")
    table.add_row("classes", str(summary.num_classes))
    card = summary.card
    from resnet_deploy.card import Preprocessing

    table.add_row("preprocessing", Preprocessing.from_dict(card["preprocessing"]).describe())
    if card.get("arch_options"):
        table.add_row("options", ", ".join(f"{k}={v}" for k, v in card["arch_options"].items()))
    for label, text in card_rows(card):  # numbers rounded, nested mappings on rows of their own
        table.add_row(escape(label), escape(text))
    names = card.get("class_names") or []
    table.add_row("class names", ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else ""))
    stdout.print(table)


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.markup import escape

    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(escape(key), escape(value))  # shapes like float32[batchx3x32x32] are not markup
    stdout.print(table)
