"""`resnet-deploy build-engine`: parse the flags into a `BuildRequest`, run `resnet_deploy.builder.build`, render.

The precision is made and proven in ONNX first (`resnet_deploy.precision`), then compiled by the target
(`resnet_deploy.targets`): ONNX Runtime, TensorRT or OpenVINO.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from resnet_deploy import registry
from resnet_deploy.commands._card_flags import with_card_flags
from resnet_deploy.commands._options import (
    ArchOption,
    CheckpointOption,
    DepthOption,
    DeviceOption,
    JsonOption,
    NumClassesOption,
    OutputOption,
    resolve_arch,
)
from resnet_deploy.commands._output import PhaseProgress, emit_json, info, stdout, warn
from resnet_deploy.errors import Interrupted
from resnet_deploy.paths import check_io

if TYPE_CHECKING:
    from resnet_deploy.foreign.card import CardFlags


def _target_help() -> str:
    """--target's help, from the declarations: what `auto` tries, then every target."""
    order = [registry.backend(name).display for name in registry.auto_order()]
    auto = ", else ".join(f"{name} if usable" for name in order[:-1]) + f", else {order[-1]}"
    names = registry.target_names()
    return f"auto ({auto}), {', '.join(names[:-1])} or {names[-1]}."


_TARGET_HELP = _target_help()


@with_card_flags
def build_engine(
    onnx: Annotated[Path | None, typer.Option(
        "--onnx", help="FP32 ONNX model: from `resnet-deploy export` or `import-onnx` (its metadata carries the "
                       "model card), or any image classifier with --mean/--std (its graph is cleaned first).")]
        = None,
    depth: DepthOption = None,
    arch: ArchOption = None,
    checkpoint: CheckpointOption = None,
    num_classes: NumClassesOption = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset when exporting first (default 20).")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help=registry.precision("fp16").help)] = False,
    int8: Annotated[bool, typer.Option("--int8", help=registry.precision("int8").help)] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help=registry.precision("bf16").help)] = False,
    calib_data: Annotated[Path | None, typer.Option(
        "--calib-data", help="Folder of images to calibrate INT8 on (class subfolders optional, labels not needed); "
                             "also the check images of --fp16.")] = None,
    calib_samples: Annotated[int, typer.Option(
        "--calib-samples", help="Calibration images, drawn evenly across class folders.")] = 512,
    check_images: Annotated[int | None, typer.Option(
        "--check-images", help="Real images the FP16/INT8 check runs on, none of them used to calibrate; the INT8 "
                               "budget search splits them in two halves [default: 128 FP16, 1000 INT8]. More images: "
                               "a tight --min-agreement met on them holds better on a test set.",
        show_default=False)] = None,
    calib_method: Annotated[str, typer.Option(
        "--calib-method", help="percentile (99.999th of |x|), entropy (KL divergence), minmax, or auto (each, "
                               "scored on held-out images by top-1 agreement with FP32; the best is kept).")]
        = "percentile",
    calib_seed: Annotated[int, typer.Option("--calib-seed", help="Seed of the calibration image draw.")] = 0,
    random_calibration: Annotated[bool, typer.Option(
        "--random-calibration", help="Calibrate INT8 on random images: for latency work only, never for "
                                     "accuracy.")] = False,
    min_agreement: Annotated[float | None, typer.Option(
        "--min-agreement", help="Top-1 agreement with FP32 (percent, on real held-out images) the model and the "
                                "artifact on this CPU must reach [default: validate's gate + a margin: 99.7 for "
                                "FP16, 95.5 for INT8, whose gate is mainly the top-1 drop on labelled images].",
        show_default=False)] = None,
    max_fallback_layers: Annotated[int, typer.Option(
        "--max-fallback-layers", help="INT8: when full INT8 misses the gate, keep up to N of the most sensitive "
                                      "layers out of INT8 (FP32; FP16 with --fp16); 0: strict full INT8.")] = 8,
    cpu: Annotated[str, typer.Option(
        "--cpu", help="INT8 for CPU targets: the CPU class it will run on. native (this machine's), avx2 (x86 "
                      "without VNNI: 7-bit weights, its u8×s8 kernels saturate on 8), vnni, amx, other (not x86), "
                      "or portable (7-bit: exact on every class).")] = "native",
    target: Annotated[str, typer.Option("--target", help=_TARGET_HELP)] = "auto",
    device: DeviceOption = "cpu",
    output: OutputOption = None,
    min_batch: Annotated[int | None, typer.Option(
        "--min-batch", help="TensorRT: smallest batch of the optimization profile [default: 1].",
        show_default=False)] = None,
    opt_batch: Annotated[int | None, typer.Option(
        "--opt-batch", help="TensorRT: batch the kernels are tuned for [default: 8].", show_default=False)] = None,
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", help="TensorRT: largest batch [default: 32].", show_default=False)] = None,
    workspace: Annotated[str | None, typer.Option(
        "--workspace", help="TensorRT: workspace memory-pool limit, e.g. 4G [default: TensorRT's].",
        show_default=False)] = None,
    opt_level: Annotated[int | None, typer.Option(
        "--opt-level", help="TensorRT: builder optimization level 0-5 [default: 3].", show_default=False)] = None,
    timing_cache: Annotated[Path | None, typer.Option(
        "--timing-cache", help="TensorRT: timing cache file, loaded if present and saved after the build.",
        show_default=False)] = None,
    version_compatible: Annotated[bool, typer.Option(
        "--version-compatible", help="TensorRT: later TensorRT versions may load the engine.")] = False,
    hardware_compatibility: Annotated[str | None, typer.Option(
        "--hardware-compatibility", help="TensorRT: none, ampere+ or same-cc [default: none].",
        show_default=False)] = None,
    flags: CardFlags | None = None,  # the card-less preprocessing flags (`with_card_flags`)
    json_output: JsonOption = False,
) -> None:
    """Build a deployable FP32/FP16/INT8 artifact.

    FP16 or calibrated INT8 made and checked in ONNX, then compiled for the target.
    """
    from resnet_deploy.builder import BuildListener, BuildRequest, build, precision_from_flags

    check_io(inputs=[onnx, checkpoint], outputs=[("--output", output), ("--timing-cache", timing_cache)])
    request = BuildRequest(
        onnx=onnx, arch=resolve_arch(depth, arch, required=False), checkpoint=checkpoint, num_classes=num_classes,
        opset=opset, **precision_from_flags(fp16=fp16, int8=int8, bf16=bf16), calib_data=calib_data,
        calib_samples=calib_samples,
        check_images=check_images, calib_method=calib_method, calib_seed=calib_seed,
        random_calibration=random_calibration, min_agreement=min_agreement,
        max_fallback_layers=max_fallback_layers, cpu=cpu, target=target, device=device, output=output,
        options={"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch,
                  "workspace_bytes": workspace, "opt_level": opt_level, "timing_cache": timing_cache,
                  "version_compatible": version_compatible, "hardware_compatibility": hardware_compatibility},
        card_flags=flags)
    bar = PhaseProgress()
    try:
        report = build(request, BuildListener(info=info, warn=warn, progress=bar.update))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted ({bar.completed()}); files are written atomically, so nothing "
                          "half-written was left") from None
    finally:
        bar.stop()
    if json_output:
        emit_json(report.to_dict())
        return
    _print_summary(report)


def _print_summary(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"build-engine → {report.output}"), title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for what, value in report.summary():
        table.add_row(what, escape(value))
    stdout.print(table)
