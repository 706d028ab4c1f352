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


app.command("train")(verbosity_options(train_cmd.train))
app.command("export")(verbosity_options(export_cmd.export))
app.command("build-engine")(verbosity_options(build_engine_cmd.build_engine))
app.command("validate")(verbosity_options(validate_cmd.validate))
app.command("bench")(verbosity_options(bench_cmd.bench))
app.command("inspect")(verbosity_options(inspect_cmd.inspect))
app.command("import-weights")(verbosity_options(import_weights_cmd.import_weights))
app.command("import-onnx")(verbosity_options(import_onnx_cmd.import_onnx))
app.command("demo")(verbosity_options(demo_cmd.demo))
app.command("triton-repo")(verbosity_options(triton_repo_cmd.triton_repo))
app.command("serve")(verbosity_options(serve_cmd.serve))
app.command("sensitivity")(verbosity_options(sensitivity_cmd.sensitivity))
app.command("finetune-int8")(verbosity_options(finetune_int8_cmd.finetune_int8))


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `resnet-deploy`."""
    run_command(typer.main.get_command(app), argv, "resnet-deploy")


if __name__ == "__main__":
    main()
