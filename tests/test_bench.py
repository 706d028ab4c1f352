"""The timing library and the report writers, on real (tiny) engines. No timing is asserted."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import resnet20_engine

from resnet_deploy.bench.report import render_markdown, write_markdown, write_plot
from resnet_deploy.bench.timing import (
    BenchReport,
    LatencyStats,
    Skipped,
    TimingConfig,
    add_speedups,
    measure,
    random_batch,
    time_engine,
)
from resnet_deploy.checkpoints import random_model
from resnet_deploy.environment import capture_environment

FEW = TimingConfig(warmup=1, iterations=4, duration_s=None)


@pytest.fixture(scope="module")
def resnet20():
    return random_model("resnet20")


def test_latency_stats_are_ordered_and_match_numpy() -> None:
    samples = np.random.default_rng(0).gamma(2.0, 1.5, size=500)
    stats = LatencyStats.from_samples(samples)
    assert stats.min <= stats.p50 <= stats.p90 <= stats.p95 <= stats.p99 <= stats.max
    assert stats.mean == pytest.approx(samples.mean())
    assert stats.std == pytest.approx(samples.std(ddof=1))
    assert stats.cv == pytest.approx(stats.std / stats.mean)
    single = LatencyStats.from_samples([2.0])
    assert single.std == 0.0 and single.p99 == 2.0
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_timing_config_validates() -> None:
    with pytest.raises(ValueError):
        TimingConfig(iterations=None, duration_s=None)
    with pytest.raises(ValueError):
        TimingConfig(iterations=0, duration_s=None)
    with pytest.raises(ValueError):
        TimingConfig(warmup=-1)
    assert "4 timed calls" in FEW.describe()


def test_random_batch_is_fresh_real_shaped_and_never_zero() -> None:
    a, b = random_batch((2, 3, 32, 32)), random_batch((2, 3, 32, 32))
    assert a.shape == (2, 3, 32, 32) and a.dtype == np.float32
    assert np.count_nonzero(a) == a.size
    assert not np.array_equal(a, b)
    assert 0.5 < float(a.std()) < 1.5  # normalized-image-like scale


def test_measure_excludes_warmup_and_counts_calls() -> None:
    calls = []

    class Counting:
        copies, timer = "none (cpu)", "host"

        def timed_call(self) -> float:
            calls.append(1)
            return float(len(calls))

    samples = measure(Counting(), TimingConfig(warmup=3, iterations=5, duration_s=None))
    assert len(calls) == 8
    assert samples == [4.0, 5.0, 6.0, 7.0, 8.0]  # warm-up calls are not among the samples
    by_time = measure(Counting(), TimingConfig(warmup=0, duration_s=0.001, min_iterations=6))
    assert len(by_time) >= 6


def test_time_engine_on_torch(resnet20) -> None:
    with resnet20_engine(resnet20) as engine:
        result = time_engine(engine, 2, FEW, model="resnet20")
    assert (result.backend, result.precision, result.batch_size) == ("torch", "fp32", 2)
    assert result.iterations == 4 and result.warmup == 1
    s = result.latency_ms
    assert 0 < s.min <= s.p50 <= s.p90 <= s.p95 <= s.p99 <= s.max
    assert result.throughput_ips == pytest.approx(2 * 1000.0 / s.mean)
    assert result.copies == "none (cpu)" and result.timer == "host"
    assert result.engine["threads"] == 1
    data = result.to_dict()
    assert set(data["latency_ms"]) >= {"mean", "std", "p50", "p90", "p95", "p99", "min", "max"}
    assert "cv" in data and "noisy" in data


def test_speedups_are_relative_to_torch_fp32_at_the_same_batch(resnet20) -> None:
    results = []
    for precision in ("fp32", "bf16"):
        with resnet20_engine(resnet20, precision) as engine:
            results += [time_engine(engine, b, FEW, model="resnet20") for b in (1, 2)]
    add_speedups(results)
    for r in results:
        base = next(x for x in results if x.precision == "fp32" and x.batch_size == r.batch_size)
        assert r.speedup == pytest.approx(base.latency_ms.mean / r.latency_ms.mean)
    assert all(r.speedup == pytest.approx(1.0) for r in results if r.precision == "fp32")


def _report(resnet20) -> BenchReport:
    with resnet20_engine(resnet20) as engine:
        results = [time_engine(engine, b, FEW, model="resnet20") for b in (1, 2)]
    add_speedups(results)
    skipped = [Skipped("resnet20", "tensorrt", "fp16", "TensorRT needs an NVIDIA GPU; bench it with --device cuda")]
    return BenchReport(environment=capture_environment(), results=results, skipped=skipped, timing=FEW,
                       notes=["INT8 calibrated on random images"])


def test_markdown_report_has_table_skipped_rows_and_machine(resnet20, tmp_path) -> None:
    report = _report(resnet20)
    text = render_markdown(report, command="resnet-deploy bench --depth 20", plot="p.png")
    assert "| torch | fp32 | 1 |" in text and "| torch | fp32 | 2 |" in text
    assert "| tensorrt | fp16 | all | TensorRT needs an NVIDIA GPU" in text
    assert "resnet-deploy bench --depth 20" in text
    assert "AMD" in text or "CPU:" in text
    assert "![latency and throughput](p.png)" in text
    assert "INT8 calibrated on random images" in text
    target = write_markdown(report, tmp_path / "out" / "r.md", plot=tmp_path / "out" / "p.png")
    assert target.read_text().startswith("# resnet-deploy bench")
    assert "](p.png)" in target.read_text()  # linked relative to the report
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.md"]  # no temporary file left behind


def test_plot_is_a_png_written_atomically(resnet20, tmp_path) -> None:
    report = _report(resnet20)
    target = write_plot(report, tmp_path / "p.png")
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]
    empty = BenchReport(environment={}, results=[], skipped=report.skipped, timing=FEW)
    with pytest.raises(ValueError):
        write_plot(empty, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_json_document_follows_the_design_contract(resnet20) -> None:
    import json

    doc = json.loads(json.dumps(_report(resnet20).to_dict()))
    assert set(doc) >= {"environment", "results", "skipped"}
    row = doc["results"][0]
    assert set(row) >= {"backend", "precision", "batch_size", "latency_ms", "throughput_ips"}
    assert set(row["latency_ms"]) >= {"mean", "std", "p50", "p90", "p95", "p99"}
    assert doc["skipped"][0]["reason"]


def test_bench_cache_is_keyed_on_every_version_that_changes_its_files() -> None:
    """Issue 17 point 3: a TensorRT upgrade must rebuild the cached plans, not only a GPU change."""
    from resnet_deploy.bench.cache import versions_key

    assert {"resnet_deploy", "torch", "onnx", "onnxruntime", "tensorrt"} <= set(versions_key())


def test_an_onnxruntime_artifact_is_not_given_to_openvino(resnet20, tmp_path) -> None:
    """`bench x.onnx x.int8.cpu.onnx --backends onnxruntime,openvino`: the plain ONNX runs on both; the ONNX Runtime
    artifact (optimized offline, uint8 activations; OpenVINO cannot compile it) is skipped on OpenVINO with
    the reason instead of failing the run."""
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra")
    from resnet_deploy.bench.plan import plan_for_artifacts
    from resnet_deploy.export import export_onnx
    from resnet_deploy.targets.onnxruntime import build_onnxruntime_artifact

    plain = export_onnx(resnet20, tmp_path / "r20.onnx", verify=False).path
    artifact = build_onnxruntime_artifact(plain, tmp_path / "r20.cpu.onnx").path
    plan = plan_for_artifacts([plain, artifact], backends=["onnxruntime", "openvino"], precisions=None,
                              device="cpu", threads=1, include_copies=True)
    runs = {(case.backend, case.artifact) for case in plan.cases}
    assert runs == {("onnxruntime", str(plain)), ("openvino", str(plain)), ("onnxruntime", str(artifact))}
    (skip,) = plan.skipped
    assert skip.backend == "openvino" and "r20.cpu.onnx is an ONNX Runtime artifact" in skip.reason
