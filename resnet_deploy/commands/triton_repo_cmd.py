"""`resnet-deploy triton-repo`: a Triton Inference Server model repository from artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from resnet_deploy.commands._options import JsonOption
from resnet_deploy.commands._output import emit_json, stdout, warn
from resnet_deploy.paths import check_io


def triton_repo(
    artifacts: Annotated[list[Path], typer.Argument(
        help="ONNX models, ONNX Runtime / OpenVINO (.xml) / TensorRT (.plan) artifacts.", metavar="ARTIFACT...")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The model repository folder.")],
    name: Annotated[str | None, typer.Option("--name", help="Model name (one artifact only) [default: from the "
                                                              "file name].", show_default=False)] = None,
    version: Annotated[int, typer.Option("--version", help="Model version folder.")] = 1,
    instances: Annotated[int, typer.Option("--instances", help="Instances per device (instance_group count).")] = 1,
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", help="max_batch_size [default: the plan's profile maximum, else 32].",
        show_default=False)] = None,
    max_queue_delay_us: Annotated[int, typer.Option(
        "--max-queue-delay-us", help="Dynamic batcher: how long a request may wait for others.")] = 100,
    gpu: Annotated[bool, typer.Option("--gpu", help="ONNX models: GPU instances (plans always are).")] = False,
    ensemble: Annotated[bool, typer.Option("--ensemble/--no-ensemble",
                                           help="Also an encoded-image ensemble <name>_jpeg (needs a model card).")]
        = True,
    force: Annotated[bool, typer.Option("--force", help="Replace models of the same name in the repository.")]
        = False,
    backend: Annotated[str, typer.Option(
        "--backend", help="native: Triton's backend for the artifact (ONNX Runtime, OpenVINO, TensorRT); python: a "
                          "Python-backend model running resnet-deploy's engine (also PyTorch cards).")] = "native",
    json_output: JsonOption = False,
) -> None:
    """Write a Triton model repository.

    config.pbtxt (checked with Triton's schema), model files, labels, and a JPEG-in ensemble that applies the
    model card's preprocessing.
    """
    from resnet_deploy.serving.model_io import read_artifact_io
    from resnet_deploy.serving.triton import RepositoryOptions, write_repository

    check_io(inputs=artifacts)
    options = RepositoryOptions(name=name, version=version, instances=instances, max_batch=max_batch,
                                max_queue_delay_us=max_queue_delay_us, gpu=gpu, ensemble=ensemble, force=force,
                                backend=backend)
    report = write_repository([read_artifact_io(path, allow_torch=backend == "python") for path in artifacts], output,
                              options)
    for note in report.notes:
        warn(note)
    if json_output:
        emit_json(report.to_dict())
        return
    table = Table(title=f"Triton model repository {report.repository}", title_justify="left")
    for column in ("model", "platform / backend", "max batch", "files"):
        table.add_column(column)
    for model in report.models:
        table.add_row(model["name"], model["platform"] or model["backend"], str(model["max_batch_size"]),
                      ", ".join(model["files"]))
    stdout.print(table)
    stdout.print(f"serve: {report.serve}", soft_wrap=True)
