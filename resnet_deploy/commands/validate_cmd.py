"""`resnet-deploy validate`: top-1/top-5 and parity of every artifact on the same real images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from resnet_deploy.commands import _output
from resnet_deploy.commands._card_flags import with_card_flags
from resnet_deploy.commands._options import DeviceOption, JsonOption
from resnet_deploy.errors import CheckFailed, Interrupted, UsageError
from resnet_deploy.paths import check_io
from resnet_deploy.tables import table_console

if TYPE_CHECKING:
    from resnet_deploy.foreign.card import CardFlags


@with_card_flags
def validate(
    artifacts: Annotated[
        list[Path],
        typer.Argument(help="Artifacts to compare: model card / checkpoint (.safetensors, .pt), .onnx, "
                            "OpenVINO .xml, TensorRT .plan/.engine; an .onnx without a model card takes "
                            "--mean/--std.", show_default=False),
    ],
    data: Annotated[
        Path,
        typer.Option("--data", help="Labelled images: an ImageFolder tree (or a root holding test/ val/ train/), "
                                    "or CIFAR-10/100 python batches.", show_default=False),
    ],
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="The artifact the others are compared with (default: the first "
                                         "PyTorch artifact, else the first); added if not listed."),
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split folder: test, val or train.")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Evaluate N images, spread evenly over the classes.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per inference batch.")] = 64,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Decoding processes (default: cores − 1, at most 4; 0 decodes in-process)."),
    ] = None,
    device: DeviceOption = "cpu",
    ten_crop: Annotated[
        bool, typer.Option("--ten-crop", help="The paper's 10-crop testing: 4 corners + centre of the resized image "
                           "and their flips, softmax averaged (cards that resize larger than the crop, e.g. 256→224; "
                           "CIFAR-style cards are refused: the paper tests them on a single view).")
    ] = False,
    ensemble: Annotated[
        bool, typer.Option("--ensemble", help="Add a row for the softmax average of all artifacts (not gated).")
    ] = False,
    max_top1_drop: Annotated[
        float | None,
        typer.Option("--max-top1-drop", help="Largest allowed top-1 drop vs the reference, in points "
                                             "(default by precision: fp32 0.1, fp16/bf16 0.3, int8 1.0)."),
    ] = None,
    min_agreement: Annotated[
        float | None,
        typer.Option("--min-agreement", help="Smallest allowed top-1 agreement with the reference, in % "
                                             "(default by precision: fp32 99.9, fp16/bf16 99.5, int8 98)."),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable images (counted in the report) instead of failing.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write a Markdown report (table, data, environment, lineage).")
    ] = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="Show every column (top-5 overlap, Δtop-5, mean Δlogit, cosine, gate); "
                                          "by default the table fits the terminal, naming what it leaves out.")
    ] = False,
    flags: CardFlags | None = None,  # the card-less preprocessing flags (`with_card_flags`)
    json_output: JsonOption = False,
) -> None:
    """Accuracy, parity and gates of artifacts.

    Top-1/top-5 of every artifact on the same images, parity against a reference, and precision gates.

    Exit code 1 when any artifact fails its gate (the full table is still printed), 2 for bad input.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from resnet_deploy.validate.report import failure_lines, gate_lines, results_table, write_report
    from resnet_deploy.validate.run import ValidateOptions
    from resnet_deploy.validate.run import validate as run_validation

    for name, value in (("--max-top1-drop", max_top1_drop), ("--min-agreement", min_agreement)):
        if value is not None and not 0 <= value <= 100:
            raise UsageError(f"{name} is in percentage points, 0 to 100; got {value}")
    check_io(inputs=[*artifacts, reference], outputs=[("--report", report)], data=[data])
    options = ValidateOptions(split=split, limit=limit, batch_size=batch_size, workers=workers, device=device,
                              ten_crop=ten_crop, ensemble=ensemble, max_top1_drop=max_top1_drop,
                              min_agreement=min_agreement, skip_bad=skip_bad,
                              card_flags=flags)

    # Read the machine before any runtime or decoding process starts: querying CUDA after they did
    # crashed the process (SIGSEGV) on a CPU-only machine with OpenVINO and ONNX Runtime loaded.
    environment = _environment() if report is not None else None

    columns = (TextColumn("validating"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
               TimeRemainingColumn())
    with _output.progress_bar(*columns) as bar:
        task = bar.add_task("validate", total=None)

        seen = [0, 0]

        def advance(done: int, total: int) -> None:
            seen[:] = [done, total]
            bar.update(task, completed=done, total=total)

        try:
            result = run_validation(artifacts, data, reference=reference, options=options, progress=advance)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted after {seen[0]} of {seen[1] or '?'} image evaluations; no report was "
                              "written, so nothing half-written was left") from None

    if result.dataset.skipped:
        _output.warn(f"skipped {result.dataset.skipped} unreadable image(s) (--skip-bad)")
    if report is not None:
        write_report(report, result, environment or {})
        _output.info(f"report written to {report}")
    if json_output:
        _output.emit_json(result.to_dict())
    else:
        console = table_console()
        console.print(results_table(result, wide=wide, width=console.width))
        for line in gate_lines(result):  # prose: wrapped at the table's width
            console.print(_output.plain(line))
        for line in failure_lines(result):
            console.print(f"[red]FAIL[/red] {_output.plain(line)}", soft_wrap=True)
    if not result.passed:
        names = ", ".join(Path(r.artifact).name for r in result.failed)
        raise CheckFailed(f"{len(result.failed)} of {len(result.results)} artifact(s) failed validation: {names}")


def _environment() -> dict[str, object]:
    from resnet_deploy.environment import capture_environment

    return capture_environment()
