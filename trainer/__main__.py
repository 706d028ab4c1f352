"""`python -m trainer [OPTIONS]`: the same command as `resnet-deploy train` (and what torchrun launches:
`torchrun --nproc_per_node N -m trainer ...`).

`python -m trainer plot RUN [RUN ...] [-o FILE] [--label NAME ...] [--responses]` draws the error
curves of one or more run folders over each other (Fig. 6), or with `--responses` the layer
response stds of runs trained with `--analyze-responses` (Fig. 7).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from resnet_deploy.cli import run_command
from resnet_deploy.commands.train_cmd import train


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


def _run(function: object, argv: list[str], prog: str) -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command()(function)
    run_command(typer.main.get_command(app), argv, prog)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "plot":
        _run(plot, args[1:], "python -m trainer plot")
    else:
        _run(train, args, "python -m trainer")


if __name__ == "__main__":
    main()
