"""The Typer root: it only wires commands (each lives in `resnet_deploy.commands`) and turns
known failures into one `error:` line with the exit codes of DESIGN.md."""

from __future__ import annotations

from typing import Annotated

import typer

from resnet_deploy import __version__
from resnet_deploy.commands import (
    bench_cmd,
    build_engine_cmd,
    demo_cmd,
    export_cmd,
    finetune_int8_cmd,
    import_onnx_cmd,
    import_weights_cmd,
    inspect_cmd,
    sensitivity_cmd,
    serve_cmd,
    train_cmd,
    triton_repo_cmd,
    validate_cmd,
)
from resnet_deploy.commands._help import ReadableGroup
from resnet_deploy.commands._output import verbosity_options
from resnet_deploy.runner import run_command

app = typer.Typer(
    name="resnet-deploy",
    help="Train ResNets (He et al. 2016) and carry them to production: ONNX, FP16, INT8, TensorRT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    cls=ReadableGroup,  # readable metavars, untruncated command list
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


# The commands, in the order --help lists them; each takes --quiet/--verbose.
COMMANDS = {
    "train": train_cmd.train,
    "export": export_cmd.export,
    "build-engine": build_engine_cmd.build_engine,
    "validate": validate_cmd.validate,
    "bench": bench_cmd.bench,
    "inspect": inspect_cmd.inspect,
    "import-weights": import_weights_cmd.import_weights,
    "import-onnx": import_onnx_cmd.import_onnx,
    "demo": demo_cmd.demo,
    "triton-repo": triton_repo_cmd.triton_repo,
    "serve": serve_cmd.serve,
    "sensitivity": sensitivity_cmd.sensitivity,
    "finetune-int8": finetune_int8_cmd.finetune_int8,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(verbosity_options(_command))


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `resnet-deploy`."""
    run_command(typer.main.get_command(app), argv, "resnet-deploy")


if __name__ == "__main__":
    main()
