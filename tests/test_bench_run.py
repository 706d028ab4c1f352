"""`run_bench` as a library call: a `BenchRequest` in, a `BenchReport` out, the report and plot written, every
line said through the listener; bad requests raise `UsageError` before anything is built. No timing is asserted."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from resnet_deploy.bench.request import (
    BenchRequest,
    ServedBenchRequest,
    check_request,
    check_served_request,
    parse_batch_sizes,
    parse_choices,
    parse_scenarios,
)
from resnet_deploy.bench.run import BenchListener, StepProgress, run_bench
from resnet_deploy.errors import UsageError

QUICK = {"batch_sizes": (1, 2), "iters": 2, "warmup": 0, "rounds": 1, "threads": 1}


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    from resnet_deploy.checkpoints import random_model
    from resnet_deploy.export import export_onnx

    folder = tmp_path_factory.mktemp("bench-run")
    return export_onnx(random_model("resnet20", seed=0), folder / "r20.onnx", verify=False).path


def test_run_bench_returns_the_report_and_writes_its_files(onnx_model, tmp_path) -> None:
    lines: dict[str, list[str]] = {"info": [], "warn": [], "detail": []}
    steps: list[int] = []

    @contextlib.contextmanager
    def progress(total: int):
        steps.append(total)
        yield StepProgress(step=lambda: steps.append(-1))

    listener = BenchListener(info=lines["info"].append, warn=lines["warn"].append, detail=lines["detail"].append,
                             steps=progress)
    request = BenchRequest(artifacts=(onnx_model,), backends=("onnxruntime",), report=tmp_path / "bench.md",
                           plot=tmp_path / "bench.png", command="resnet-deploy bench r20.onnx", **QUICK)
    report = run_bench(request, listener)
    assert {(r.backend, r.precision, r.batch_size) for r in report.results} == {
        ("onnxruntime", "fp32", 1), ("onnxruntime", "fp32", 2)}
    assert report.planned_rows == 2 and not report.interrupted
    assert steps == [2, -1, -1]  # one step per row and round
    doc = report.to_dict()
    assert next(iter(doc)) == "command" and doc["command"] == request.command
    assert "scenarios" not in doc  # neither scenarios nor accuracy were asked for
    assert doc["environment"]["load"]["before"] is not None
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "](bench.png)" in (tmp_path / "bench.md").read_text()
    assert f"plot written to {tmp_path / 'bench.png'}" in lines["info"]
    assert any("p50 per round" in line for line in lines["detail"])


def test_a_library_caller_gets_no_command_key(onnx_model) -> None:
    report = run_bench(BenchRequest(artifacts=(onnx_model,), backends=("onnxruntime",), **{**QUICK,
                                                                                          "batch_sizes": (1,)}))
    assert "command" not in report.to_dict() and report.results


@pytest.mark.parametrize(("changes", "needle"), [
    ({}, "name a model"),
    ({"arch": "resnet20", "artifacts": (Path("m.onnx"),)}, "not both"),
    ({"arch": "resnet20", "backends": ("tflite",)}, "--backends"),
    ({"arch": "resnet20", "precisions": ("fp8",)}, "--precisions"),
    ({"arch": "resnet20", "batch_sizes": (0,)}, "--batch-sizes"),
    ({"arch": "resnet20", "rounds": 0}, "--rounds"),
    ({"arch": "resnet20", "iters": 3, "duration": 1.0}, "--iters or --duration"),
    ({"arch": "resnet20", "threads": 0}, "--threads"),
    ({"arch": "resnet20", "plot": Path("p.jpg")}, ".png"),
    ({"arch": "resnet20", "accuracy": True, "data": Path(".")}, "trained artifacts"),
    ({"arch": "resnet20", "data": Path(".")}, "add --accuracy"),
    ({"arch": "resnet20", "calib_samples": 0}, "--calib-samples"),
    ({"arch": "resnet20", "scenarios": ("burst",)}, "--scenario"),
    ({"artifacts": (Path("missing.onnx"),)}, "no such file"),
])
def test_bad_requests_raise_usage_error(changes, needle) -> None:
    with pytest.raises(UsageError, match=None) as error:
        check_request(BenchRequest(**changes))
    assert needle in str(error.value)


def test_served_request_checks() -> None:
    with pytest.raises(UsageError, match="name the served models"):
        check_served_request(ServedBenchRequest(url="localhost:8000", models=()))
    with pytest.raises(UsageError, match="--max-requests"):
        check_served_request(ServedBenchRequest(url="localhost:8000", models=("m",), max_requests=0))


def test_option_text_parsers() -> None:
    assert parse_batch_sizes("8,1,8") == (1, 8)
    assert parse_choices(" ORT ,onnxruntime", ("ort", "onnxruntime"), "--x") == ("ort", "onnxruntime")
    assert parse_choices(None, ("a",), "--x") is None
    assert parse_scenarios("offline,server") == ("offline", "server") and parse_scenarios(None) == ()
    with pytest.raises(UsageError, match="--concurrency"):
        parse_batch_sizes("1,x", "--concurrency")
    with pytest.raises(UsageError, match="--scenario"):
        parse_scenarios(",")
