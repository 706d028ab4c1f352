"""`resnet-deploy demo`: the whole pipeline on an embedded real data set, one report at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_deploy.commands._options import ArchOption, JsonOption
from resnet_deploy.commands._output import emit_json, info, stderr, stdout, training_bar, warn
from resnet_deploy.errors import CheckFailed, UsageError
from resnet_deploy.paths import check_io


def demo(
    out: Annotated[Path, typer.Option("--output", "-o", metavar="DIR",
                                      help="Folder for data, runs, artifacts and report.md.")]
        = Path("demo-out"),
    data: Annotated[Path | None, typer.Option(
        "--data", help="Your ImageFolder tree with train/ and test/ (or val/) [default: the embedded "
                       "handwritten digits from scikit-learn].")] = None,
    arch: ArchOption = None,
    train_iters: Annotated[int, typer.Option("--train-iters", help="Training iterations.")] = 300,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = 64,
    bench_batch_sizes: Annotated[str, typer.Option("--bench-batch-sizes", help="Batch sizes to time.")] = "1,32",
    bench_duration: Annotated[float, typer.Option(
        "--bench-duration", help="Seconds of timed calls per backend, precision and batch size.")] = 2.0,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="INT8 calibration images.")] = 256,
    qat_iters: Annotated[int, typer.Option(
        "--qat-iters", help="Quantization-aware fine-tuning iterations for the INT8 beside the calibrated one "
                            "(0 leaves it out).")] = 60,
    force: Annotated[bool, typer.Option(
        "--force", help="Start over in an --output folder that holds an earlier run, replacing its outputs.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Run the whole pipeline, one report.

    Train, export, make FP16/INT8 (calibrated and fine-tuned) and engines, validate and bench: one report in
    --output/report.md.
    """
    from resnet_deploy.builder import BuildListener
    from resnet_deploy.demo.report import write_report
    from resnet_deploy.demo.run import DemoHooks, DemoOptions, run_demo
    from resnet_deploy.models import get_entry

    check_io(outputs=[("--output", out / "report.md")])
    name = arch or "resnet20"
    try:
        get_entry(name)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    if train_iters < 1 or batch_size < 1 or calib_samples < 1 or bench_duration <= 0:
        raise UsageError("--train-iters, --batch-size, --calib-samples and --bench-duration must be positive")
    if qat_iters < 0:
        raise UsageError(f"--qat-iters must be 0 (no fine-tuning) or more, got {qat_iters}")
    options = DemoOptions(out=out, data=data, arch=name, train_iters=train_iters, batch_size=batch_size,
                          bench_batch_sizes=bench_batch_sizes, bench_duration=bench_duration,
                          calib_samples=calib_samples, qat_iters=qat_iters, force=force)
    from trainer.progress import RichReporter

    # soft_wrap: the command lines stay whole, so they can be copied and pasted.
    hooks = DemoHooks(announce=lambda text: stderr.print(f"\n{text}", soft_wrap=True),
                      build=BuildListener(info=info, warn=warn),
                      train_reporter=RichReporter(stderr, make_progress=training_bar))
    result = run_demo(options, hooks)
    report = write_report(result, out / "report.md")
    validate = result.step("validate")
    summary = {"passed": result.passed, "report": str(report), "seconds": round(result.seconds, 1),
               "artifacts": [str(p) for p in result.artifacts],
               "steps": [{"name": s.name, "command": s.command, "returncode": s.returncode,
                          "seconds": round(s.seconds, 1), "skipped": s.skipped_reason} for s in result.steps]}
    if json_output:
        emit_json(summary)
    else:
        stdout.print(f"report: {report}  ({len(result.artifacts)} artifacts, {result.seconds:.0f} s)")
    if validate is not None and not validate.ok:
        raise CheckFailed(f"an artifact failed its accuracy gate; see {report}")
