"""`python -m trainer plot RUN [RUN ...] [-o FILE] [--label NAME ...] [--responses]`: draw the error curves
of one or more run folders over each other (Fig. 6), or with `--responses` the layer response stds of
runs trained with `--analyze-responses` (Fig. 7).

Training itself has one command, `resnet-deploy train` (under torchrun: `torchrun --nproc_per_node N
-m resnet_deploy train ...`); the trainer is a library and does not import the CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from resnet_deploy.errors import UsageError
from resnet_deploy.runner import run_command

PROG = "python -m trainer"
TRAIN_HINT = ("training is `resnet-deploy train ...` (or `python -m resnet_deploy train ...`; with several "
              "processes `torchrun --nproc_per_node N -m resnet_deploy train ...`)")

app = typer.Typer(
    help="Trainer tools. Train with `resnet-deploy train`; under torchrun: "
    "`torchrun --nproc_per_node N -m resnet_deploy train ...`.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Trainer tools: `plot` draws the error curves of run folders (Fig. 6) or their layer responses (Fig. 7)."""


@app.command("plot", short_help="Draw the error curves (Fig. 6) or layer responses (Fig. 7) of run folders.")
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (each with metrics.jsonl).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write.")] = Path("curves.png"),
    label: Annotated[list[str] | None, typer.Option("--label", help="Legend name per run, in order.")] = None,
    title: Annotated[str | None, typer.Option("--title", help="Figure title.")] = None,
    responses: Annotated[bool, typer.Option(
        "--responses", help="Plot layer response stds (runs trained with --analyze-responses).")] = False,
) -> None:
    """Overlay runs: dashed training error, bold test error against iterations (the paper's Fig. 6)."""
    from trainer.plots import plot_curves, plot_responses

    if responses:
        path = plot_responses(runs, output, labels=label or None)
    else:
        path = plot_curves(runs, output, labels=label or None, title=title)
    print(path)


@app.command("train", hidden=True, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def _train_moved(ctx: typer.Context) -> None:
    raise UsageError(TRAIN_HINT)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        args = ["--help"]
    elif args[0].startswith("-") and args[0] not in ("--help", "-h"):
        args = ["train", *args]  # the old `python -m trainer --arch ...` form: say where training went
    run_command(typer.main.get_command(app), args, PROG)


if __name__ == "__main__":
    main()
