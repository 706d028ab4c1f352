"""The Typer root: it only wires commands (each lives in `resnet_deploy.commands`) and turns
known failures into one `error:` line with the exit codes of DESIGN.md."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from engines.base import EngineError
from resnet_deploy import __version__
from resnet_deploy.commands import (
    bench_cmd,
    build_engine_cmd,
    demo_cmd,
    export_cmd,
    import_onnx_cmd,
    import_weights_cmd,
    inspect_cmd,
    train_cmd,
    triton_repo_cmd,
    validate_cmd,
)
from resnet_deploy.errors import ResnetDeployError

# Typer raises click's usage errors (recent Typer vendors click as `typer._click`); find the class
# through a public name so both layouts work.
_CLICK_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

app = typer.Typer(
    name="resnet-deploy",
    help="Train ResNets (He et al. 2016) and carry them to production: ONNX, FP16, INT8, TensorRT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"resnet-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Train ResNets (He et al. 2016) and carry them to production: ONNX, FP16, INT8, TensorRT."""


app.command("train")(train_cmd.train)
app.command("export")(export_cmd.export)
app.command("build-engine")(build_engine_cmd.build_engine)
app.command("validate")(validate_cmd.validate)
app.command("bench")(bench_cmd.bench)
app.command("inspect")(inspect_cmd.inspect)
app.command("import-weights")(import_weights_cmd.import_weights)
app.command("import-onnx")(import_onnx_cmd.import_onnx)
app.command("demo")(demo_cmd.demo)
app.command("triton-repo")(triton_repo_cmd.triton_repo)


def run_command(command: typer.core.TyperCommand | typer.core.TyperGroup, argv: list[str] | None, prog: str) -> None:
    """Run a Typer command as a program: known failures end in one `error: ...` line and DESIGN.md's exit
    codes, never a traceback. `python -m trainer` runs through here too."""
    try:
        result = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except _CLICK_USAGE_ERROR as exc:
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else prog
        print(f"error: {exc.format_message()} (see: {where} --help)", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except (ResnetDeployError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: say so in one line unless asked for the traceback
        if os.environ.get("RESNET_DEPLOY_DEBUG"):
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc} "
            "(a bug; rerun with RESNET_DEPLOY_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `resnet-deploy`."""
    run_command(typer.main.get_command(app), argv, "resnet-deploy")


if __name__ == "__main__":
    main()
