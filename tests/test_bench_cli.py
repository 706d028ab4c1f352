"""`resnet-deploy bench` end to end on ResNet-20 at batch 1/2 with a few calls. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QUICK = ("--batch-sizes", "1,2", "--iters", "3", "--warmup", "1", "--threads", "1")
OPENVINO = importlib.util.find_spec("openvino") is not None


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnet_deploy", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One run over every backend and precision: JSON on stdout, report and plot beside it."""
    out = tmp_path_factory.mktemp("bench")
    proc = run_cli("bench", "--depth", "20", *QUICK, "--device", "cpu", "--cache-dir", str(out / "cache"),
                   "--report", str(out / "report.md"), "--plot", str(out / "plot.png"), "--json")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout), proc


def test_json_shape_and_keys(full_run) -> None:
    _, doc, _ = full_run
    assert set(doc) >= {"environment", "results", "skipped", "command", "timing", "notes"}
    env = doc["environment"]
    assert env["cpu"]["logical_cores"] >= 1 and env["versions"]["torch"]
    for row in doc["results"]:
        assert set(row) >= {"backend", "precision", "batch_size", "latency_ms", "throughput_ips", "speedup",
                            "cv", "iterations", "copies", "engine"}
        s = row["latency_ms"]
        assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
        assert row["iterations"] == 3 and row["batch_size"] in (1, 2)
        assert row["speedup"] is not None  # the torch fp32 baseline ran at both batch sizes
    measured = {(r["backend"], r["precision"]) for r in doc["results"]}
    assert {("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
            ("onnxruntime", "int8")} <= measured
    if OPENVINO:
        assert {("openvino", "fp32"), ("openvino", "int8")} <= measured


def test_unavailable_combinations_are_skipped_with_reasons(full_run) -> None:
    _, doc, _ = full_run
    skipped = {(s["backend"], s["precision"]): s["reason"] for s in doc["skipped"]}
    assert all(reason for reason in skipped.values())
    for precision in ("fp32", "fp16", "int8"):
        assert "TensorRT" in skipped[("tensorrt", precision)] or "tensorrt" in skipped[("tensorrt", precision)]
    assert "INT8" in skipped[("torch", "int8")]
    assert "fp16" in skipped[("torch", "fp16")].lower()
    assert ("onnxruntime", "bf16") in skipped
    assert ("openvino", "fp16") in skipped
    from resnet_deploy import registry

    requested = {(b, p) for b in registry.backend_names() for p in registry.precision_names()}  # every declared one
    measured = {(r["backend"], r["precision"]) for r in doc["results"]}
    assert requested == measured | set(skipped)  # nothing silently dropped


def test_report_and_plot_written(full_run) -> None:
    out, doc, proc = full_run
    report = (out / "report.md").read_text()
    assert "| torch | fp32 | 1 |" in report and "random images" in report
    assert "](plot.png)" in report
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert "error" not in proc.stderr.lower()


def test_table_output(full_run) -> None:
    out, _, _ = full_run  # reuses the models that run built in its cache
    proc = run_cli("bench", "--arch", "resnet20", "--backends", "torch,onnxruntime", "--precisions", "fp32,int8",
                   "--batch-sizes", "1", "--iters", "2", "--warmup", "0", "--threads", "1",
                   "--cache-dir", str(out / "cache"))
    assert proc.returncode == 0, proc.stderr
    assert "resnet20" in proc.stdout and "onnxruntime" in proc.stdout and "1.00×" in proc.stdout
    assert "skipped" in proc.stdout and "PyTorch eager has no INT8" in proc.stdout


def test_bench_artifacts_with_a_baseline_from_the_card(full_run) -> None:
    out, _, _ = full_run
    (onnx_path,) = (out / "cache").glob("resnet20-*/model.onnx")  # exported by that run, card in its metadata
    backends = "torch,onnxruntime,openvino" if OPENVINO else "torch,onnxruntime"
    proc = run_cli("bench", str(onnx_path), "--backends", backends, "--precisions", "fp32,bf16",
                   "--batch-sizes", "1,2", "--iters", "2", "--warmup", "0", "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {(r["backend"], r["precision"], r["batch_size"]): r for r in doc["results"]}
    assert ("torch", "fp32", 1) in rows and rows[("torch", "fp32", 1)]["artifact"] == "(baseline from the card)"
    assert rows[("onnxruntime", "fp32", 2)]["artifact"] == str(onnx_path)
    if OPENVINO:
        assert ("openvino", "fp32", 1) in rows
    assert any("baseline" in note for note in doc["notes"])


@pytest.mark.skipif(not OPENVINO, reason="OpenVINO is an optional extra")
def test_an_fp16_openvino_ir_is_timed_at_the_precision_it_computes(tmp_path) -> None:
    """`build-engine --fp16` gives an FP16 IR on a CPU (auto → openvino); bench times it instead of skipping it."""
    from resnet_deploy.checkpoints import random_model
    from resnet_deploy.export import export_onnx
    from resnet_deploy.targets.openvino import build_openvino_ir

    loaded = random_model("resnet20", seed=0)
    onnx_path = export_onnx(loaded, tmp_path / "r20.onnx", verify=False).path
    ir = build_openvino_ir(onnx_path, tmp_path / "r20.fp16.xml", precision="fp16", card=loaded.card)
    proc = run_cli("bench", str(ir.path), "--batch-sizes", "1", "--iters", "2", "--warmup", "0", "--rounds", "1",
                   "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (row,) = [r for r in doc["results"] if r["backend"] == "openvino"]
    assert row["artifact"] == str(ir.path) and row["precision"] == ir.runtime_precision  # fp32 or bf16, not f16
    assert not [s for s in doc["skipped"] if s["backend"] == "openvino"], doc["skipped"]
    assert any("r20.fp16.xml: an FP16 model" in note and "the precision it computes" in note for note in doc["notes"])


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(("args", "needle"), [
    (("--depth", "20", "--batch-sizes", "0"), "--batch-sizes"),
    (("--depth", "20", "--batch-sizes", "1,x"), "--batch-sizes"),
    (("--depth", "20", "--backends", "tflite"), "--backends"),
    (("--depth", "20", "--precisions", "fp8"), "--precisions"),
    (("--depth", "20", "--iters", "3", "--duration", "1"), "--iters or --duration"),
    (("--depth", "20", "--iters", "0"), "--iters"),
    (("--depth", "20", "--warmup", "-1"), "--warmup"),
    (("--depth", "20", "--threads", "0"), "--threads"),
    (("--depth", "20", "--device", "tpu"), "--device"),
    (("--depth", "20", "--plot", "p.jpg"), ".png"),
    (("--depth", "20", "--calib-data", "/no/such/dir"), "--calib-data"),
    (("--depth", "21",), "depth"),
    (("missing.onnx",), "no such file"),
    (("missing.onnx", "--depth", "20"), "not both"),
    ((), "name a model"),
])
def test_bad_input_is_one_error_line_exit_2(args, needle, capsys) -> None:
    proc = _in_process(capsys, "bench", *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in _error_line(proc)
    assert proc.stdout == ""


def test_unknown_artifact_type(tmp_path, capsys) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"not a model")
    proc = _in_process(capsys, "bench", str(path))
    assert proc.returncode == 2
    assert "unknown artifact type" in _error_line(proc)


def _in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI's `main` in this interpreter (fast for errors raised before any model is built)."""
    from resnet_deploy.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_explicit_tensorrt_without_it_installed_is_an_error(capsys) -> None:
    proc = _in_process(capsys, "bench", "--depth", "20", "--backends", "torch,tensorrt")
    assert proc.returncode == 2
    assert "resnet-deploy[tensorrt]" in _error_line(proc)


def _without_openvino(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter where `openvino` cannot be imported (as if the extra were absent)."""
    code = ("import sys; sys.modules['openvino'] = None; from resnet_deploy.cli import main; "
            f"main({list(args)!r})")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)


def test_explicit_openvino_without_the_extra_is_an_error() -> None:
    proc = _without_openvino("bench", "--depth", "20", "--backends", "openvino", "--iters", "1")
    assert proc.returncode == 2, proc.stderr
    assert "resnet-deploy[openvino]" in _error_line(proc)


def test_default_backends_without_openvino_list_it_as_skipped(tmp_path) -> None:
    proc = _without_openvino("bench", "--depth", "20", "--precisions", "bf16", "--batch-sizes", "1", "--iters", "2",
                             "--warmup", "0", "--threads", "1", "--cache-dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    reasons = [s["reason"] for s in doc["skipped"] if s["backend"] == "openvino"]
    assert reasons and "resnet-deploy[openvino]" in reasons[0]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.parametrize("copies", [(), ("--exclude-copies",)])
def test_cuda_rows_with_and_without_copies(tmp_path, copies) -> None:
    if not _cuda():
        pytest.skip("needs a CUDA GPU")
    proc = run_cli("bench", "--depth", "20", "--device", "cuda", "--backends", "torch,onnxruntime,tensorrt",
                   "--precisions", "fp32,fp16", *QUICK, *copies, "--cache-dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    torch_rows = [r for r in doc["results"] if r["backend"] == "torch"]
    assert {r["precision"] for r in torch_rows} == {"fp32", "fp16"}
    expected = "excluded" if copies else "included"
    assert all(r["copies"] == expected for r in torch_rows)
    assert all(r["timer"] == ("cuda-events" if copies else "host") for r in torch_rows)
    assert doc["environment"]["gpu"]["name"]
    trt = [r for r in doc["results"] if r["backend"] == "tensorrt"]
    if trt:
        assert all(r["copies"] == expected for r in trt)
