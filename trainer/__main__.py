"""`python -m trainer [OPTIONS]`: the same command as `resnet-deploy train` (and what torchrun launches:
`torchrun --nproc_per_node N -m trainer ...`).

`python -m trainer plot RUN [RUN ...] [-o FILE] [--label NAME ...] [--responses]` draws the error
curves of one or more run folders over each other (Fig. 6), or with `--responses` the layer
response stds of runs trained with `--analyze-responses` (Fig. 7).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from engines.base import EngineError
from resnet_deploy.commands.train_cmd import train
from resnet_deploy.errors import ResnetDeployError

_CLICK_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


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
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except _CLICK_USAGE_ERROR as exc:
        print(f"error: {exc.format_message()} (see: {prog} --help)", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except (ResnetDeployError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: one line unless asked for the traceback
        if os.environ.get("RESNET_DEPLOY_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (a bug; rerun with RESNET_DEPLOY_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "plot":
        _run(plot, args[1:], "python -m trainer plot")
    else:
        _run(train, args, "python -m trainer")


if __name__ == "__main__":
    main()
