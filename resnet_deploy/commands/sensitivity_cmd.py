"""`resnet-deploy sensitivity`: which layers cost INT8 accuracy, measured one at a time on held-out images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from resnet_deploy.commands._options import JsonOption
from resnet_deploy.commands._output import PhaseProgress, emit_json, info, warn
from resnet_deploy.errors import UsageError
from resnet_deploy.paths import check_io

#: images the measurement needs that calibration did not use (an agreement on one image says nothing)
MIN_HELD_OUT = 2

if TYPE_CHECKING:
    from resnet_deploy.precision.sensitivity import SensitivityResult


def sensitivity(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX model made by `resnet-deploy export`.",
                                          show_default=False)],
    calib_data: Annotated[Path, typer.Option(
        "--calib-data", help="Folder of images to calibrate on (class subfolders optional).", show_default=False)],
    data: Annotated[Path | None, typer.Option(
        "--data", help="Held-out images to measure on [default: images of --calib-data calibration did not use].",
        show_default=False)] = None,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="Calibration images.")] = 512,
    images: Annotated[int, typer.Option("--images", help="Held-out images to measure on.")] = 256,
    calib_method: Annotated[str, typer.Option(
        "--calib-method", help="percentile, entropy or minmax (the ranges are cached beside the model).")]
        = "percentile",
    calib_seed: Annotated[int, typer.Option("--calib-seed", help="Seed of the image draw.")] = 0,
    top: Annotated[int, typer.Option("--top", help="Rows of the table (0: all).")] = 20,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Write a PNG bar chart by layer, in network order.", show_default=False)] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write a Markdown report (the full ranking).", show_default=False)] = None,
    json_output: JsonOption = False,
) -> None:
    """Rank layers by their INT8 sensitivity.

    How much keeping each quantized layer alone out of INT8 helps (calibrating once).
    """
    from resnet_deploy.atomic import write_text
    from resnet_deploy.precision.sensitivity import analyse, markdown_report, write_plot

    if images < 2 or calib_samples < 1:
        raise UsageError("--images must be at least 2 and --calib-samples positive")
    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: the chart is a .png file")
    if not calib_data.is_dir():
        raise UsageError(f"{calib_data}: no such calibration folder")
    if data is not None and not data.is_dir():
        raise UsageError(f"--data {data}: no such folder")
    # before the analysis: an output over the model or an image, or in a folder that takes no files, is
    # refused now, naming the user's path (not the temporary file the atomic writer would have failed on)
    check_io(inputs=[model], outputs=[("--report", report), ("--plot", plot)], data=[calib_data, data])
    if data is None:
        _require_held_out(calib_data, calib_samples)
    info(f"sensitivity of {model.name}: calibrating once on {calib_data} ({calib_method}), then one model per layer")
    bar = PhaseProgress()
    try:
        result = analyse(model, calib_data=calib_data, data=data, samples=calib_samples, images=images,
                         method=calib_method, seed=calib_seed, progress=bar.update)
    finally:
        bar.stop()
    for note in result.notes:
        warn(note)
    if plot is not None:
        write_plot(result, plot)
        info(f"plot written to {plot}")
    if report is not None:
        write_text(report, markdown_report(result, plot))
        info(f"report written to {report}")
    if json_output:
        emit_json(result.to_dict())
        return
    _print_table(result, top)


def _require_held_out(calib_data: Path, calib_samples: int) -> None:
    """Without --data the measurement uses the calibration folder's images calibration did not draw: refuse a
    folder too small to leave two of them, rather than measure on calibration images and call them held-out."""
    from resnet_deploy.data import open_image_folder_unlabelled
    from resnet_deploy.precision.calibration import calibration_folder

    root = calibration_folder(calib_data)
    try:
        count = len(open_image_folder_unlabelled(root))
    except UsageError:
        return  # the analysis says what is wrong with the folder, in its own words
    left = count - min(calib_samples, count)
    if left < MIN_HELD_OUT:
        ways = [f"give a folder of at least {calib_samples + MIN_HELD_OUT} images"]
        if count > MIN_HELD_OUT:
            ways.append(f"lower --calib-samples to {count - MIN_HELD_OUT} or less")
        ways.append("pass --data with held-out images")
        raise UsageError(f"--calib-data {root}: {count} image(s); calibrating on {min(calib_samples, count)} leaves "
                         f"{left} held out, and the measurement needs at least {MIN_HELD_OUT} images calibration "
                         f"did not use: {', '.join(ways[:-1])}, or {ways[-1]}")


def _print_table(result: SensitivityResult, top: int) -> None:
    from resnet_deploy.tables import table_console

    console = table_console()
    console.print(sensitivity_table(result, top, width=console.width))


def sensitivity_table(result: SensitivityResult, top: int, *, width: int | None = None) -> Any:
    """The ranking for a terminal of `width` columns: numbers whole, each layer's name whole (it folds onto a
    second line rather than being cut into a duplicate of its neighbour's)."""
    from rich.markup import escape

    from resnet_deploy.tables import add_name_column, add_number_column, add_word_column, compact_table, fit_columns

    full = result.full_int8
    title = (f"INT8 sensitivity of {escape(result.source.name)} on {result.images} images (full INT8: agreement "
             f"{full['agreement']:.2f}%, mean |Δlogit| {full['mean_abs_logit_diff']:.4g})")
    headers = {"agreement %": "agreement\n%", "Δ agreement": "Δ\nagreement", "mean |Δlogit|": "mean\n|Δlogit|",
               "SQNR dB": "SQNR\ndB"}
    ranked = result.ranked()
    rows = [{"rank": str(i), "layer": escape(layer.block), "op": layer.op_type, "agreement %": f"{layer.agreement:.2f}",
             "Δ agreement": f"{layer.delta_agreement:+.2f}", "mean |Δlogit|": f"{layer.mean_abs_logit_diff:.4g}",
             "SQNR dB": f"{layer.sqnr_db:.1f}"} for i, layer in enumerate(ranked[:top] if top > 0 else ranked, 1)]

    def build(shown: list[str]) -> Any:
        table = compact_table(title)
        for column in shown:
            if column == "layer":
                add_name_column(table, column)
            elif column == "op":
                add_word_column(table, column)
            else:
                add_number_column(table, headers.get(column, column))
        for row in rows:
            table.add_row(*[row[column] for column in shown])
        return table

    columns = ["rank", "layer", "op", "agreement %", "Δ agreement", "mean |Δlogit|", "SQNR dB"]
    return fit_columns(build, columns, ("SQNR dB", "op"), width)
