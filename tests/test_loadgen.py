"""bench --scenario: MLPerf's LoadGen drives a real engine through SingleStream, Offline and Server; its summary is
parsed into bench's results; the accuracy mode answers every sample; a missing extra is one error line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy.checkpoints import random_model
from resnet_deploy.errors import UsageError

pytest.importorskip("mlperf_loadgen", reason="MLPerf LoadGen is an optional extra (resnet-deploy[loadgen])")
from resnet_deploy.bench.loadgen import (  # noqa: E402
    ScenarioResult,
    ScenarioSettings,
    find_peak_qps,
    parse_summary,
    run_scenario,
)

REPO = Path(__file__).resolve().parent.parent
SHORT = ScenarioSettings(duration_s=0.3, min_queries=1, target_latency_ms=1000.0, offline_batch=4, server_batch=4)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    from resnet_deploy.export import export_onnx

    return Path(export_onnx(random_model("resnet20", seed=0), tmp_path_factory.mktemp("lg") / "resnet20.onnx",
                            verify=False).path)


@pytest.fixture(scope="module")
def engine(onnx_path):
    from resnet_deploy.artifacts import open_engine

    with open_engine(onnx_path, threads=1) as opened:
        yield opened


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((16, 3, 32, 32), dtype=np.float32)


@pytest.mark.parametrize("scenario", ["single-stream", "offline", "server"])
def test_scenarios_run_and_parse(engine, samples, scenario):
    result = run_scenario(engine, samples, scenario, SHORT, model="resnet20", artifact="resnet20.onnx",
                          expected_ms=1.0, target_qps=20.0)
    assert result.backend == "onnxruntime" and result.precision == "fp32"
    lat = result.latency_ms
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert result.samples_per_s is not None and result.samples_per_s > 0
    assert result.mlperf_valid is False and "not a valid MLPerf result" in result.notes[0]
    if scenario == "server":
        assert result.target_qps == 20.0 and result.target_latency_ms == 1000.0
    json.dumps(result.to_dict())  # the JSON document holds it as is


def test_accuracy_mode_answers_every_sample(engine, samples):
    labels = engine.infer(samples).argmax(axis=1)
    labels[:4] = (labels[:4] + 1) % 10  # four deliberately wrong labels: top-1 must be exactly 12/16
    result = run_scenario(engine, samples, "offline", SHORT, model="resnet20", artifact=None, expected_ms=1.0,
                          labels=labels)
    assert result.top1 == pytest.approx(75.0)


def test_parse_summary_reads_loadgen_lines():
    text = ("Scenario : Server\nResult is : INVALID\n  Min duration satisfied : Yes\n"
            "99.00 percentile latency (ns)   : 1500000\n")
    fields = parse_summary(text)
    assert fields["Result is"] == "INVALID" and fields["99.00 percentile latency (ns)"] == "1500000"


def _result(qps: float, valid: bool) -> ScenarioResult:
    return ScenarioResult("server", "m", "onnxruntime", "fp32", None, valid, False, {}, qps, None, target_qps=qps)


def test_peak_qps_search_brackets_the_limit():
    tried = []

    def run(qps: float) -> ScenarioResult:
        tried.append(qps)
        return _result(qps, qps <= 37.0)

    peak = find_peak_qps(run, 10.0, steps=6)
    assert 30.0 < peak.target_qps <= 37.0 and peak.valid
    assert tried[:3] == [10.0, 20.0, 40.0]


def test_an_invalid_run_says_which_constraint_failed():
    from resnet_deploy.bench.loadgen import unmet_constraints

    text = ("Result is : INVALID\n  Performance constraints satisfied : NO\n  Min duration satisfied : Yes\n"
            "  Min queries satisfied : Yes\n  Early stopping satisfied: NO\n")
    notes = unmet_constraints(parse_summary(text))
    assert len(notes) == 2 and "latency bound was exceeded" in notes[0] and "Early stopping" in notes[1]


def test_peak_search_that_finds_nothing_says_why():
    def run(qps: float) -> ScenarioResult:
        result = _result(qps, False)
        result.latency_ms = {"p99": 80.3}
        result.notes = ["LoadGen: too few queries to certify the percentile bound statistically (run longer) "
                        "(Early stopping satisfied: NO)"]
        return result

    with pytest.raises(UsageError) as caught:
        find_peak_qps(run, 10.0, steps=3)
    message = str(caught.value)
    assert "down to 1.25 was VALID" in message and "p99 80.3 ms" in message and "Early stopping" in message
    assert "--duration" in message


def _cli(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_cli_bad_scenario_and_missing_extra(onnx_path):
    done = subprocess.run([sys.executable, "-m", "resnet_deploy", "bench", str(onnx_path), "--scenario", "burst"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2 and "error: --scenario takes single-stream, offline, server" in done.stderr
    code = ("import sys; sys.modules['mlperf_loadgen'] = None\nfrom resnet_deploy.cli import main\n"
            f"main(['bench', {str(onnx_path)!r}, '--scenario', 'offline'])")
    done = _cli(code)
    assert done.returncode == 2, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        "error: MLPerf scenarios need MLPerf's LoadGen: pip install 'resnet-deploy[loadgen]'"]


def test_mlperf_criterion_is_99_percent_of_the_fp32_row_of_the_same_model():
    from resnet_deploy.bench.loadgen import judge_mlperf_accuracy

    def row(model: str, precision: str, top1: float) -> ScenarioResult:
        return ScenarioResult("offline", model, "onnxruntime", precision, None, True, True, {}, None, None,
                              top1=top1, images=1000)

    rows = [row("a", "fp32", 80.0), row("a", "int8", 79.2), row("a", "fp16", 79.1), row("b", "int8", 50.0)]
    judge_mlperf_accuracy(rows)
    assert [r.meets_mlperf_accuracy for r in rows] == [True, True, False, None]  # 79.2 = 0.99 * 80 exactly
    assert rows[1].reference_top1 == 80.0 and rows[3].reference_top1 is None
    assert "no FP32 row" in rows[3].notes[0]


def test_cli_accuracy_mode_on_trained_artifacts(trained_digits):
    """bench --accuracy: each artifact's top-1 over LoadGen equals a direct count on the same images."""
    import torch

    from resnet_deploy.data import open_dataset, sample_labelled

    images, labels = sample_labelled(open_dataset(trained_digits["data"]), trained_digits["model_card"].preprocessing,
                                     60, 0)
    with torch.no_grad():
        expected = 100.0 * float((trained_digits["model"](torch.from_numpy(images)).argmax(1).numpy() == labels)
                                 .mean())
    done = subprocess.run(
        [sys.executable, "-m", "resnet_deploy", "bench", str(trained_digits["card"]), str(trained_digits["onnx"]),
         "--batch-sizes", "4", "--iters", "3", "--rounds", "1", "--threads", "1", "--accuracy", "--data",
         str(trained_digits["data"]), "--accuracy-images", "60", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["scenarios"]
    assert {(r["backend"], r["images"]) for r in rows} == {("torch", 60), ("onnxruntime", 60)}
    for row in rows:
        assert row["top1"] == pytest.approx(expected, abs=100 / 60 + 1e-9)  # ONNX may flip one near-tie
        assert row["reference_top1"] is not None and row["meets_mlperf_accuracy"] is (
            row["top1"] >= 0.99 * row["reference_top1"])


@pytest.mark.parametrize(("extra", "message"), [
    (["--accuracy"], "error: --accuracy needs labelled images: --data DIR"),
    (["--data", "."], "error: --data is the labelled images of --accuracy"),
])
def test_cli_accuracy_options_are_checked(onnx_path, extra, message):
    done = subprocess.run([sys.executable, "-m", "resnet_deploy", "bench", str(onnx_path), *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_cli_accuracy_refuses_random_weights():
    done = subprocess.run([sys.executable, "-m", "resnet_deploy", "bench", "--depth", "20", "--accuracy", "--data",
                           "."], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2 and "random weights have no accuracy" in done.stderr, done.stderr


@pytest.mark.parametrize("args, message", [
    (["--target-qps", "inf"], "--target-qps must be a positive, finite number"),
    (["--target-qps", "nan"], "--target-qps must be a positive, finite number"),
    (["--target-qps", "1e-6"], "fewer than one query"),
    (["--target-qps", "0.5", "--duration", "1"], "fewer than one query"),
    (["--target-qps", "1e9", "--duration", "10"], "schedules in memory up front"),
    (["--target-latency-ms", "nan"], "--target-latency-ms must be a positive number"),
    (["--target-latency-ms", "-1"], "--target-latency-ms must be a positive number"),
])
def test_cli_server_numbers_refused_before_any_work(onnx_path, args, message):
    """Issue 27: `inf` grew memory to the OOM killer, `1e-6` never finished, `nan` was a bug exit: each is now one
    error line, exit 2, before anything is opened or timed."""
    done = subprocess.run([sys.executable, "-m", "resnet_deploy", "bench", str(onnx_path), "--scenario", "server",
                           *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "timing" not in done.stderr and "opening" not in done.stderr


def test_sigint_ends_a_server_run_at_once(onnx_path):
    """Issue 27: SIGINT during a Server run was ignored until LoadGen's run ended (hours at a low rate): it now
    ends the run within seconds, exit 130, without C++ aborting at exit."""
    import os
    import signal
    import time

    code = ("import numpy as np\nfrom resnet_deploy.artifacts import open_engine\n"
            "from resnet_deploy.bench.loadgen import ScenarioSettings, run_scenario\n"
            f"engine = open_engine({str(onnx_path)!r})\n"
            "samples = np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32)\n"
            "print('running', flush=True)\n"
            "run_scenario(engine, samples, 'server', ScenarioSettings(duration_s=120, min_queries=1, target_qps=0.5),"
            " model='m', artifact=None, expected_ms=1.0, target_qps=0.5)\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO)
    try:
        assert process.stdout.readline().strip() == "running"
        time.sleep(3)  # LoadGen has started its 120 s run
        started = time.monotonic()
        os.kill(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert elapsed < 15 and "terminate called" not in err
