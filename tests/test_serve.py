"""`resnet-deploy serve`: a card and an ONNX model on a real Triton server (the serve extra), on loopback.
Encoded images and float tensors give validate's logits, the classification extension the card's labels;
SIGTERM lets a request in flight finish, then stops the server (exit 0); what cannot be served is refused
before any work (exit 2, one error line).
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tritonclient.http", reason="tritonclient is an optional extra (resnet-deploy[serve])")
REPO = Path(__file__).resolve().parent.parent


def _free_ports() -> int:
    """A port P with P, P+1 and P+2 free on loopback."""
    for _ in range(50):
        port = random.randint(20000, 60000)
        try:
            for number in range(port, port + 3):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", number))
            return port
        except OSError:
            continue
    raise RuntimeError("no three free consecutive ports")


def _wait_ready(port: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("serve did not become ready")


def test_serve_card_and_onnx_then_sigterm_drains(triton_install, trained_digits, tmp_path):
    import tritonclient.http as http

    from resnet_deploy.artifacts import open_engine
    from resnet_deploy.data import eval_transform

    onnx = tmp_path / "digits_fp32.onnx"
    shutil.copy(trained_digits["onnx"], onnx)
    port = _free_ports()
    process = subprocess.Popen([sys.executable, "-m", "resnet_deploy", "serve", str(trained_digits["card"]), str(onnx),
                                "--port", str(port), "--max-batch", "8", "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "COLUMNS": "120"})
    try:
        _wait_ready(port, process)
        files = sorted(Path(trained_digits["data"], "test").rglob("*.png"))[::30][:8]
        encoded = []
        for file in files:
            buffer = io.BytesIO()
            with Image.open(file) as image:
                image.convert("RGB").save(buffer, format="JPEG", quality=95)
            encoded.append(buffer.getvalue())
        transform = eval_transform(trained_digits["model_card"].preprocessing)
        batch = np.stack([transform(Image.open(io.BytesIO(data)).convert("RGB")).numpy() for data in encoded])
        client = http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
        for model, artifact in (("digits_resnet20", trained_digits["card"]), ("digits_fp32", onnx)):
            with open_engine(artifact) as engine:
                expected = engine.infer(batch)
            images = http.InferInput("IMAGE", [len(encoded), 1], "BYTES")
            images.set_data_from_numpy(np.array(encoded, dtype=np.object_).reshape(-1, 1))
            top = client.infer(f"{model}_jpeg", [images], outputs=[http.InferRequestedOutput("logits", class_count=1)])
            tensor = http.InferInput("input", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            logits = client.infer(model, [tensor]).as_numpy("logits")
            np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
            labels = [row[0].decode().split(":")[2] for row in top.as_numpy("logits")]
            assert labels == [trained_digits["model_card"].class_names[i] for i in expected.argmax(1)]

        # Requests in flight when SIGTERM arrives still get their answers; then the server and serve exit.
        client.close()  # Triton's shutdown waits for open HTTP connections (up to its exit timeout)
        results: list[tuple[float, object]] = []
        stop_sending = threading.Event()

        def keep_sending() -> None:
            tensor = http.InferInput("input", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            sender = http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
            try:
                while not stop_sending.is_set():
                    try:
                        answer: object = sender.infer("digits_resnet20", [tensor]).as_numpy("logits")
                    except Exception as exc:  # refused once the server is stopping
                        answer = exc
                    results.append((time.monotonic(), answer))
                    if not isinstance(answer, np.ndarray):
                        return
            finally:
                sender.close()

        workers = [threading.Thread(target=keep_sending) for _ in range(3)]
        for worker in workers:
            worker.start()
        time.sleep(1.5)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stop_sending.set()
        out, err = process.communicate(timeout=90)
        for worker in workers:
            worker.join(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "stopped (tritonserver exit status 0)" in out and "error" not in err
    answered = [(when, answer) for when, answer in results if isinstance(answer, np.ndarray)]
    assert answered and all(answer.shape == (len(batch), 10) for _, answer in answered)
    assert any(when > signalled for when, _ in answered), "no request in flight at SIGTERM was answered"
    for number in (port, port + 1, port + 2):  # every port is given back (TIME_WAIT aside: nothing listens)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", number))


def test_serve_refusals_before_any_work(triton_install, tmp_path):
    port = _free_ports()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port + 1))
        busy.listen()
        done = subprocess.run([sys.executable, "-m", "resnet_deploy", "serve", str(REPO / "tests" / "data" /
                               "resnet20_cifar10.safetensors"), "--port", str(port)], capture_output=True, text=True,
                              cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        f"error: --port: 127.0.0.1:{port + 1} is not free (Address already in use); the server needs --port and the "
        "next two ports"]
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    done = subprocess.run([sys.executable, "-m", "resnet_deploy", "serve", str(tmp_path / "x.onnx"), "--port",
                           str(port)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and "not a readable ONNX model" in done.stderr and "Traceback" not in done.stderr
