"""`resnet-deploy serve`: artifacts on a real Triton server, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from resnet_deploy.commands._output import info, plain, stdout, warn
from resnet_deploy.errors import ResnetDeployError, UsageError
from resnet_deploy.paths import check_io

# After SIGTERM, Triton finishes requests in flight and waits for open HTTP connections this long at most.
EXIT_TIMEOUT_S = 30

if TYPE_CHECKING:
    from resnet_deploy.serving.tritonserver import RunningServer


def serve(
    artifacts: Annotated[list[Path], typer.Argument(
        help="Model cards (.safetensors), ONNX models, ONNX Runtime / OpenVINO (.xml) / TensorRT (.plan) artifacts.",
        metavar="ARTIFACT...")],
    port: Annotated[int, typer.Option("--port", help="HTTP port; gRPC is the next one, Prometheus metrics the one "
                                                     "after.")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")]
        = "127.0.0.1",
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", help="Largest batch the dynamic batcher forms [default: 32, or the plan's profile maximum].",
        show_default=False)] = None,
    instances: Annotated[int, typer.Option("--instances", help="Model instances (processes) per artifact.")] = 1,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads per instance [default: the runtime's].", show_default=False)] = None,
    max_queue_delay_us: Annotated[int, typer.Option(
        "--max-queue-delay-us", help="Dynamic batcher: how long a request may wait for others.")] = 100,
    ready_timeout: Annotated[float, typer.Option("--ready-timeout", help="Seconds to wait for every model to load.")]
        = 300.0,
) -> None:
    """Serve artifacts on a Triton server.

    Each artifact runs through resnet-deploy's own engine (the one validate and bench use) in Triton's Python
    backend, with dynamic batching, the card's labels (Triton's classification extension), and <name>_jpeg: encoded
    images in, the card's preprocessing on the server. Health, metrics and statistics are Triton's. Needs the serve
    extra (the nvidia-pytriton wheel's server).
    """
    from resnet_deploy.serving.model_io import read_artifact_io
    from resnet_deploy.serving.triton import RepositoryOptions, write_repository
    from resnet_deploy.serving.tritonserver import find_tritonserver, package_source, start_server

    check_io(inputs=artifacts)
    if not 1 <= port <= 65533:
        raise UsageError(f"--port {port}: must be 1 to 65533 (the server takes it and the next two)")
    if instances < 1 or (threads is not None and threads < 1) or ready_timeout <= 0:
        raise UsageError("--instances, --threads and --ready-timeout must be positive")
    find_tritonserver()  # the missing extra is refused before any work
    ios = [read_artifact_io(path, allow_torch=True) for path in artifacts]
    ports = (port, port + 1, port + 2)
    for number in ports:
        _require_free(host, number)
    workdir = Path(tempfile.mkdtemp(prefix="resnet-deploy-serve-"))
    try:
        options = RepositoryOptions(instances=instances, max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                                    backend="python", threads=threads, source=package_source())
        report = write_repository(ios, workdir / "models", options)
        for note in report.notes:
            if "stock tritonserver image" not in note:  # this server's Python is this environment's: it has Pillow
                warn(note)
        info(f"starting Triton on {len(report.models)} models ...")
        server = start_server(workdir / "models", host=host, http_port=ports[0], grpc_port=ports[1],
                              metrics_port=ports[2], ready_timeout=ready_timeout, exit_timeout=EXIT_TIMEOUT_S,
                              log=workdir / "tritonserver.log")
        try:
            _print_endpoints(report.models, server)
            _wait_for_stop(server)
        finally:
            status = server.stop(timeout=EXIT_TIMEOUT_S + 15)
        stdout.print(f"stopped (tritonserver exit status {status})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _require_free(host: str, number: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, number))
        except OSError as exc:
            raise UsageError(f"--port: {host}:{number} is not free ({exc.strerror}); the server needs --port and "
                             "the next two ports") from None


def _print_endpoints(models: list[dict], server: RunningServer) -> None:
    table = Table(title="Serving (Triton Inference Server, resnet-deploy's engines)", title_justify="left")
    for column in ("model", "input", "max batch"):
        table.add_column(column)
    for model in models:
        if model["name"].endswith("_preprocess"):
            continue
        kind = "encoded image (BYTES)" if model["name"].endswith("_jpeg") else "float32 NCHW tensor"
        table.add_row(plain(model["name"]), kind, str(model["max_batch_size"]))
    stdout.print(table)
    stdout.print(f"HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}", soft_wrap=True)
    stdout.print("Ctrl-C or SIGTERM stops: requests in flight finish first.")


def _wait_for_stop(server: RunningServer) -> None:
    """Until SIGINT/SIGTERM (a second one stops at once) or the server exits by itself (an error, exit 1)."""
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                raise ResnetDeployError(f"tritonserver exited by itself (status {server.process.returncode}); "
                                        f"its log ends:\n{server.log_tail()}")
        info("stopping: finishing the requests in flight ...")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
