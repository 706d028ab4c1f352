"""A real Triton server (the `tritonserver` of the nvidia-pytriton wheel, the `serve` extra) loads a repository
that `triton-repo --backend python` wrote, on loopback ports, and answers with tritonclient: real JPEG bytes through
the `_preprocess` model give validate's tensors, through the `_jpeg` ensemble validate's logits, and the
classification extension the card's labels.

Skipped, with the reason, where the extra is missing or cannot run here (not Linux, numpy 2: the wheel's stub is
built for numpy 1). Bounded: the server must be ready in 120 s, each request has a client timeout.
"""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tritonclient.http", reason="tritonclient is an optional extra (resnet-deploy[serve])")


@pytest.fixture(scope="module")
def served(triton_install, trained_digits, tmp_path_factory):  # triton_install first: skip before any training
    """The digits card's ONNX export, served through resnet-deploy's engine with its JPEG ensemble."""
    from resnet_deploy.serving.model_io import read_artifact_io
    from resnet_deploy.serving.triton import RepositoryOptions, write_repository
    from resnet_deploy.serving.tritonserver import package_source, start_server

    root = tmp_path_factory.mktemp("served")
    write_repository([read_artifact_io(trained_digits["onnx"])], root / "repo",
                     RepositoryOptions(backend="python", max_batch=8, threads=1, source=package_source()))
    with start_server(root / "repo", ready_timeout=120, log=root / "tritonserver.log") as server:
        yield server


def _jpegs(trained_digits, count: int = 6) -> list[bytes]:
    """Held-out digit images of the fixture (PNG files) re-encoded as JPEG, at their size and enlarged."""
    files = sorted(Path(trained_digits["data"], "test").rglob("*.png"))[::40][:count]
    encoded = []
    for index, file in enumerate(files):
        with Image.open(file) as image:
            rgb = image.convert("RGB")
        if index % 2:
            rgb = rgb.resize((40, 29), Image.BILINEAR)  # the card resizes the shorter side, then crops
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=92)
        encoded.append(buffer.getvalue())
    return encoded


def _validate_view(trained_digits, encoded: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """What validate does with these files: PIL decode, the card's eval transform, the artifact's engine."""
    from resnet_deploy.artifacts import open_engine
    from resnet_deploy.data import eval_transform

    transform = eval_transform(trained_digits["model_card"].preprocessing)
    tensors = []
    for data in encoded:
        with Image.open(io.BytesIO(data)) as image:
            tensors.append(transform(image.convert("RGB")).numpy())
    batch = np.stack(tensors)
    with open_engine(trained_digits["onnx"]) as engine:
        return batch, engine.infer(batch)


def _image_input(encoded: list[bytes]):
    import tritonclient.http as http

    tensor = http.InferInput("IMAGE", [len(encoded), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_).reshape(-1, 1))
    return tensor


def test_preprocess_and_ensemble_give_validates_tensors_and_logits(served, trained_digits):
    import tritonclient.http as http

    encoded = _jpegs(trained_digits)
    tensors, logits = _validate_view(trained_digits, encoded)
    client = http.InferenceServerClient(served.http_url, network_timeout=60)
    pre = client.infer("digits_resnet20_preprocess", [_image_input(encoded)])
    assert np.array_equal(pre.as_numpy("input"), tensors)  # bit for bit, without torch in the model
    out = client.infer("digits_resnet20_jpeg", [_image_input(encoded)])
    np.testing.assert_allclose(out.as_numpy("logits"), logits, rtol=0, atol=1e-4)
    assert np.array_equal(out.as_numpy("logits").argmax(1), logits.argmax(1))

    classes = client.infer("digits_resnet20_jpeg", [_image_input(encoded)],
                           outputs=[http.InferRequestedOutput("logits", class_count=1)]).as_numpy("logits")
    names = trained_digits["model_card"].class_names
    assert [row[0].decode().split(":")[2] for row in classes] == [names[i] for i in logits.argmax(1)]


def test_float_input_batches_health_and_metrics(served, trained_digits):
    import tritonclient.grpc as grpc

    tensors, logits = _validate_view(trained_digits, _jpegs(trained_digits))
    client = grpc.InferenceServerClient(served.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits_resnet20")
    tensor = grpc.InferInput("input", list(tensors.shape), "FP32")
    tensor.set_data_from_numpy(tensors)
    result = client.infer("digits_resnet20", [tensor], client_timeout=60).as_numpy("logits")
    np.testing.assert_allclose(result, logits, rtol=0, atol=1e-4)
    with urllib.request.urlopen(served.metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    assert 'nv_inference_request_success{model="digits_resnet20"' in metrics


def test_bad_image_fails_its_request_not_the_server(served, trained_digits):
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(served.http_url, network_timeout=60)
    with pytest.raises(InferenceServerException, match="preprocessing"):
        client.infer("digits_resnet20_jpeg", [_image_input([b"not an image"])])
    assert client.is_server_ready()
    good = client.infer("digits_resnet20_jpeg", [_image_input(_jpegs(trained_digits, 1))])
    assert good.as_numpy("logits").shape == (1, 10)


def _bench(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "resnet_deploy", "bench", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=300)


def test_bench_url_concurrency_levels_and_loadgen(served):
    """bench --url: end-to-end latency and throughput at each concurrency level, bounded by --max-requests and
    --duration; LoadGen's SingleStream and Server drive the served model through the same client."""
    import json

    done = _bench("--url", served.http_url, "digits_resnet20", "--concurrency", "1,2", "--duration", "1",
                  "--max-requests", "40", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["served"]
    assert [row["concurrency"] for row in rows] == [1, 2]
    for row in rows:
        assert 0 < row["requests"] <= 40 and row["errors"] == 0 and row["requests_per_s"] > 0
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"] <= row["latency_ms"]["max"]
    pytest.importorskip("mlperf_loadgen", reason="LoadGen is an optional extra (resnet-deploy[loadgen])")
    done = _bench("--url", f"grpc://{served.grpc_url}", "digits_resnet20", "--concurrency", "1", "--duration", "1",
                  "--max-requests", "20", "--scenario", "single-stream,server", "--target-qps", "5",
                  "--target-latency-ms", "1000", "--json")
    assert done.returncode == 0, done.stderr
    scenarios = json.loads(done.stdout)["scenarios"]
    assert [s["scenario"] for s in scenarios] == ["single-stream", "server"]
    assert all(s["backend"] == "triton" and s["latency_ms"]["p50"] > 0 for s in scenarios)


def test_bench_url_refusals(tmp_path):
    """Bad --url input is one error line, exit 2, before anything is measured (all cases in one interpreter)."""
    import json
    import subprocess
    import sys

    from resnet_deploy.serving.tritonserver import free_port

    port = free_port()  # nothing listens there
    cases = [(["--url", "localhost", "m"], "expected HOST:PORT"),
             (["--url", "ftp://127.0.0.1:1", "m"], "http:// or grpc://"),
             (["--url", f"127.0.0.1:{port}", "m"], "no Triton server answers there"),
             (["--url", f"127.0.0.1:{port}"], "name the served models"),
             (["--url", f"127.0.0.1:{port}", "m", "--report", str(tmp_path / "r.md")], "--url benches"),
             (["--url", f"127.0.0.1:{port}", "m", "--scenario", "server", "--target-qps", "inf"],
              "--target-qps must be")]
    code = ("import json, sys\nfrom resnet_deploy.cli import main\n"
            f"for args in json.loads({json.dumps(json.dumps([args for args, _ in cases]))}):\n"
            "    try:\n        main(['bench', *args])\n    except SystemExit as exc:\n"
            "        print(f'exit {exc.code}', file=sys.stderr, flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    lines = [line for line in done.stderr.splitlines() if line.startswith(("error:", "exit "))]
    assert len(lines) == 2 * len(cases), done.stderr
    for (args, message), error, status in zip(cases, lines[::2], lines[1::2], strict=True):
        assert message in error and status == "exit 2", (args, error, status)
    assert "Traceback" not in done.stderr


def test_server_stops_when_its_starter_is_killed(triton_install, trained_digits, tmp_path):
    """A `serve` killed with SIGKILL cannot stop its server: Linux's parent-death signal does (no server left
    holding the ports)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("import time\nfrom pathlib import Path\n"
            "from resnet_deploy.serving.model_io import read_artifact_io\n"
            "from resnet_deploy.serving.triton import RepositoryOptions, write_repository\n"
            "from resnet_deploy.serving.tritonserver import package_source, start_server\n"
            f"repo = Path({str(tmp_path / 'repo')!r})\n"
            f"write_repository([read_artifact_io({str(trained_digits['onnx'])!r})], repo, "
            "RepositoryOptions(backend='python', ensemble=False, threads=1, source=package_source()))\n"
            "server = start_server(repo, ready_timeout=120)\n"
            "print(server.process.pid, flush=True)\ntime.sleep(600)\n")
    starter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(starter.stdout.readline())
    finally:
        starter.kill()
        starter.wait(30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.kill(server_pid, signal.SIGKILL)
    raise AssertionError("tritonserver outlived the process that started it")
