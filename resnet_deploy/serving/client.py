"""A model served by a Triton server (`resnet-deploy serve`, or any Triton) as bench sees it: an engine of the
contract whose `infer` is one request over HTTP or gRPC (tritonclient), and a load generator that keeps N requests in
flight and measures each one end to end (client send to response decoded).

`url` is HOST:PORT (HTTP), or http://HOST:PORT / grpc://HOST:PORT.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engines.base import Engine, TensorInfo
from resnet_deploy.errors import BackendUnavailable, UsageError
from resnet_deploy.samples import random_images

EXTRA = "pip install 'resnet-deploy[serve]'"
NUMPY_TYPES = {"FP32": "float32", "FP16": "float16", "INT8": "int8", "UINT8": "uint8", "INT32": "int32",
               "INT64": "int64"}


def parse_url(url: str) -> tuple[str, str]:
    """(protocol, host:port)."""
    protocol, _, address = url.rpartition("://")
    protocol = protocol or "http"
    if protocol not in ("http", "grpc"):
        raise UsageError(f"--url {url!r}: the scheme is http:// or grpc:// (or none: HTTP)")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--url {url!r}: expected HOST:PORT, e.g. 127.0.0.1:8000")
    return protocol, address


def _module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError:
        raise BackendUnavailable(f"a Triton client comes with tritonclient: {EXTRA}") from None
    return module


@dataclass(frozen=True)
class ServedModel:
    url: str
    protocol: str
    name: str
    input: TensorInfo  # batch first; None where free
    output: TensorInfo
    datatype: str  # Triton's name of the input type
    max_batch: int  # 0: the server does not batch (dims include the batch)


def describe_served(url: str, model: str, *, timeout: float = 10.0) -> ServedModel:
    """The served model's one input and output, from the server's metadata; refused when it is not ready."""
    protocol, address = parse_url(url)
    module = _module(protocol)
    client = _client(module, protocol, address, timeout)
    try:
        try:
            ready = client.is_model_ready(model)
        except Exception as exc:  # connection refused, timeout: the client's own exception types
            raise UsageError(f"--url {url}: no Triton server answers there ({_reason(exc)})") from None
        if not ready:
            raise UsageError(f"--url {url}: the server has no ready model {model!r}")
        metadata = client.get_model_metadata(model)
        config = client.get_model_config(model)
    finally:
        client.close()
    if protocol == "grpc":
        from google.protobuf.json_format import MessageToDict

        metadata = MessageToDict(metadata, preserving_proto_field_name=True)
        config = MessageToDict(config, preserving_proto_field_name=True).get("config", {})
    inputs, outputs = metadata.get("inputs", []), metadata.get("outputs", [])
    if len(inputs) != 1 or len(outputs) != 1:
        raise UsageError(f"{model}: bench drives a model with one input and one output; it has {len(inputs)} and "
                         f"{len(outputs)}")
    datatype = inputs[0]["datatype"]
    if datatype not in NUMPY_TYPES:
        raise UsageError(f"{model}: input type {datatype}; bench sends tensors (use the float model, not _jpeg)")
    max_batch = int(config.get("max_batch_size", 0))

    def info(entry: dict[str, Any]) -> TensorInfo:
        shape = tuple(None if int(d) < 0 else int(d) for d in entry["shape"])
        return TensorInfo(entry["name"], shape, NUMPY_TYPES.get(entry["datatype"], entry["datatype"]))

    return ServedModel(url, protocol, model, info(inputs[0]), info(outputs[0]), datatype, max_batch)


def _client(module: Any, protocol: str, address: str, timeout: float) -> Any:
    if protocol == "grpc":
        return module.InferenceServerClient(address)
    return module.InferenceServerClient(address, connection_timeout=timeout, network_timeout=timeout)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


class ServedEngine(Engine):
    """A served model; `infer` is one request. Each thread gets its own connection (the HTTP client may not change
    threads), made on its first request."""

    name = "triton"

    def __init__(self, served: ServedModel, *, timeout: float = 30.0) -> None:
        super().__init__(precision="served", device=served.url)
        self.served, self.timeout = served, timeout
        self._module = _module(served.protocol)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._input, self._output = served.input, served.output

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = _client(self._module, self.served.protocol, parse_url(self.served.url)[1], self.timeout)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        tensor = self._module.InferInput(self.served.input.name, list(batch.shape), self.served.datatype)
        tensor.set_data_from_numpy(np.ascontiguousarray(batch))
        if self.served.protocol == "grpc":
            result = self._client().infer(self.served.name, [tensor], client_timeout=self.timeout)
        else:
            result = self._client().infer(self.served.name, [tensor])
        return result.as_numpy(self.served.output.name)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "url": self.served.url, "protocol": self.served.protocol,
                "model": self.served.name}

    def close(self) -> None:
        if not self._closed:
            for client in self._clients:
                with contextlib.suppress(Exception):  # a finished thread's HTTP client may refuse another thread
                    client.close()
        super().close()


def sample_batch(served: ServedModel, batch: int = 1, seed: int = 0) -> np.ndarray:
    """Random data of the served input's shape (a free dim: the batch `batch`, any other 1)."""
    if served.max_batch == 0 and served.input.shape and served.input.shape[0] is not None:
        batch = served.input.shape[0]
    shape = [batch, *(d or 1 for d in served.input.shape[1:])]
    return random_images(shape, seed=seed).astype(served.input.dtype, copy=False)


@dataclass
class ConcurrencyResult:
    model: str
    url: str
    concurrency: int
    batch: int
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    samples_per_s: float
    latency_ms: dict[str, float]  # p50, p90, p99, mean, min, max: end to end, as the client saw each request
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_concurrency(served: ServedModel, concurrency: int, *, duration_s: float, max_requests: int,
                        batch: int = 1, timeout: float = 30.0) -> ConcurrencyResult:
    """`concurrency` clients, each sending its next request when the last is answered, for `duration_s` or
    `max_requests` requests in all, whichever comes first; one untimed request per client first."""
    if concurrency < 1 or max_requests < 1 or duration_s <= 0:
        raise UsageError("concurrency, --max-requests and --duration must be positive")
    data = sample_batch(served, batch)
    engine = ServedEngine(served, timeout=timeout)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    budget = threading.Semaphore(max_requests)
    lock = threading.Lock()
    stop = threading.Event()
    ready = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        mine = latencies[index]
        try:
            engine.infer(data)  # this thread's connection, warmed up, not timed
        except Exception as exc:
            with lock:
                errors.append(_reason(exc))
        ready.wait()
        while not errors and not stop.is_set() and time.monotonic() < deadline[0] \
                and budget.acquire(blocking=False):
            start = time.perf_counter()
            try:
                engine.infer(data)
            except Exception as exc:  # the server refused or timed out: counted, and the client stops
                with lock:
                    errors.append(_reason(exc))
                return
            mine.append((time.perf_counter() - start) * 1000.0)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    try:
        for thread in threads:
            thread.start()
        deadline[0] = time.monotonic() + 3600  # set properly once every client is connected
        ready.wait()
        began = time.perf_counter()
        deadline[0] = time.monotonic() + duration_s
        done = threading.Event()
        watcher = threading.Thread(target=lambda: ([t.join() for t in threads], done.set()), daemon=True)
        watcher.start()
        try:
            while not done.wait(0.1):  # not Thread.join here: Ctrl-C must get through
                pass
        except KeyboardInterrupt:
            stop.set()
            raise
        seconds = time.perf_counter() - began
    finally:
        stop.set()
        engine.close()
    timings = np.array([value for values in latencies for value in values])
    if timings.size == 0:
        raise UsageError(f"{served.name} at {served.url}: no request was answered ({errors[0] if errors else 'none'})")
    stats = {"p50": float(np.percentile(timings, 50)), "p90": float(np.percentile(timings, 90)),
             "p99": float(np.percentile(timings, 99)), "mean": float(timings.mean()), "min": float(timings.min()),
             "max": float(timings.max())}
    notes = [f"{len(errors)} requests failed: {errors[0]}"] if errors else []
    if timings.size >= max_requests:
        notes.append(f"stopped at --max-requests {max_requests} before --duration")
    count = int(timings.size)
    return ConcurrencyResult(served.name, served.url, concurrency, len(data), count, len(errors), seconds,
                             count / seconds, count * len(data) / seconds, stats, notes)
