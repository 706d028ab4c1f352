"""Start and stop a real Triton Inference Server: the `tritonserver` binary that the `nvidia-pytriton` wheel ships
(Triton 2.51 with the Python backend, CPU or GPU), on a model repository, on loopback ports by default.

What the wheel needs around the binary (as PyTriton's own launcher does it): a backend folder whose Python
backend holds the stub built for this Python version, the wheel's bundled libraries on LD_LIBRARY_PATH (the stub
links libcudart even on a CPU-only machine), and this environment's `bin` first on PATH, so that the stub's
embedded Python finds this virtual environment's packages (numpy, resnet_deploy, the runtimes); it ignores
PYTHONPATH, so a repository written for this machine names the folder resnet_deploy comes from in a model parameter
(`RepositoryOptions.source`). The stub is built for numpy 1: under numpy 2 it passes wrong tensors, so it is
refused there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from resnet_deploy.errors import BackendUnavailable, UsageError

EXTRA = "pip install 'resnet-deploy[serve]'"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    python_backend: Path  # libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python
    libraries: Path  # the wheel's bundled shared libraries
    version: str  # the nvidia-pytriton wheel's


def find_tritonserver() -> TritonInstall:
    """The wheel's server, or BackendUnavailable saying why it cannot run here."""
    if not sys.platform.startswith("linux"):
        raise BackendUnavailable(f"the nvidia-pytriton server runs on Linux only (this is {sys.platform})")
    try:
        import importlib.metadata as metadata
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(f"a Triton server comes with the nvidia-pytriton wheel: {EXTRA}")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(binary=root / "bin" / "tritonserver", python_backend=root / "backends" / "python",
                            stub=root / "python_backend_stubs" / python_version / "triton_python_backend_stub",
                            libraries=root.parent.parent / "nvidia_pytriton.libs",
                            version=metadata.version("nvidia-pytriton"))
    if not install.binary.is_file():
        raise BackendUnavailable(f"{install.binary}: missing from the nvidia-pytriton wheel; reinstall it ({EXTRA})")
    if not install.stub.is_file():
        raise BackendUnavailable(f"the nvidia-pytriton wheel has no Python-backend stub for Python {python_version}")
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        # Seen here: the stub (built for numpy 1) reads an input [1, 2, 3] as [1, 1, 1] and returns empty outputs.
        raise BackendUnavailable(f"the nvidia-pytriton {install.version} Python-backend stub is built for numpy 1 "
                                 f"and passes wrong tensors under numpy {numpy.__version__} (the wheel requires "
                                 "numpy<2): pip install 'numpy<2'")
    return install


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    process: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    workdir: Path
    log: Path
    stopped: bool = field(default=False)

    @property
    def http_url(self) -> str:
        return f"{_client_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_client_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.metrics_port}/metrics"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM: Triton stops taking requests, finishes those in flight, unloads the models and exits; SIGKILL
        only past `timeout`. Returns the server's exit status."""
        if not self.stopped:
            self.stopped = True
            try:
                if self.process.poll() is None:
                    self.process.send_signal(signal.SIGTERM)
                    self.process.wait(timeout)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # past the timeout, or asked again: at once
                self.process.kill()
                self.process.wait(10)
                if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                    raise
            finally:
                shutil.rmtree(self.workdir, ignore_errors=True)
        return self.process.returncode

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _client_host(host: str) -> str:
    return LOOPBACK if host in ("0.0.0.0", "") else host


def server_environment(install: TritonInstall) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (env.get("LD_LIBRARY_PATH"), str(install.libraries)) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.prefix) / "bin"), env.get("PATH", "")))
    return env


def package_source() -> str:
    """The folder this process imports resnet_deploy from (a source checkout, or site-packages)."""
    import resnet_deploy

    return str(Path(resnet_deploy.__file__).resolve().parents[1])


def start_server(repository: Path, *, host: str = LOOPBACK, http_port: int = 0, grpc_port: int = 0,
                 metrics_port: int = 0, ready_timeout: float = 180.0, exit_timeout: int = 30,
                 log: Path | None = None) -> RunningServer:
    """Start tritonserver on `repository` and wait until it reports ready (every model loaded); a port of 0 is a
    free one. A server that exits or does not become ready in time is stopped and refused with its log's end."""
    install = find_tritonserver()
    if not repository.is_dir():
        raise UsageError(f"{repository}: no model repository there")
    workdir = Path(tempfile.mkdtemp(prefix="resnet-deploy-triton-"))
    backend = workdir / "backends" / "python"
    backend.mkdir(parents=True)
    for file in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy(install.python_backend / file, backend / file)
    shutil.copy(install.stub, backend / "triton_python_backend_stub")
    ports = [port or free_port() for port in (http_port, grpc_port, metrics_port)]
    log_path = log or workdir / "tritonserver.log"
    command = [str(install.binary), f"--model-repository={repository.resolve()}",
               f"--backend-directory={workdir / 'backends'}", "--disable-auto-complete-config",
               f"--http-address={host}", f"--grpc-address={host}", f"--metrics-address={host}",
               f"--http-port={ports[0]}", f"--grpc-port={ports[1]}", f"--metrics-port={ports[2]}",
               f"--exit-timeout-secs={exit_timeout}", "--log-verbose=0"]
    with open(log_path, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=server_environment(install),
                                   stdin=subprocess.DEVNULL, start_new_session=True,  # Ctrl-C reaches us alone
                                   preexec_fn=_stop_with_parent)
    server = RunningServer(process, host, *ports, workdir=workdir, log=log_path)
    try:
        _wait_ready(server, ready_timeout)
    except UsageError as exc:
        tail = server.log_tail()
        server.stop(10)
        raise UsageError(f"the Triton server did not start: {exc}; its log ends:\n{tail}") from None
    except BaseException:  # Ctrl-C while waiting: no server left behind
        server.stop(10)
        raise
    return server


def _stop_with_parent() -> None:
    """In the server's process before it starts: SIGTERM when the process that started it dies, even by SIGKILL
    (Linux's parent-death signal), so a killed `serve` leaves no server holding its ports."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _wait_ready(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://{server.http_url}/v2/health/ready"
    while True:
        if server.process.poll() is not None:
            raise UsageError(f"tritonserver exited with status {server.process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise UsageError(f"tritonserver not ready after {timeout:.0f} s")
        time.sleep(0.2)
