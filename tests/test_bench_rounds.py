"""Interleaved rounds and the flags that keep a disturbed row from printing a speed-up. No timing is asserted:
the disturbance injected here (a sleep in one round) is far larger than any noise."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import resnet20_engine
from rich.console import Console

from engines.base import Engine, PreparedRun
from resnet_deploy.bench.plan import BenchCase, BenchPlan, run_plan, total_steps
from resnet_deploy.bench.report import render_markdown, results_tables
from resnet_deploy.bench.timing import (
    BenchReport,
    BenchResult,
    LatencyStats,
    TimingConfig,
    add_speedups,
    flag_results,
)
from resnet_deploy.checkpoints import random_model
from resnet_deploy.demo.report import _speedup_cell, bench_rows

SLEEP_S = 0.25  # per call in the slow round: hundreds of times the tiny model's latency


class SlowRound(Engine):
    """A real engine whose timed calls sleep during one chosen round (calls are counted per prepared run)."""

    name = "torch"

    def __init__(self, inner: Engine, slow_calls: range) -> None:
        super().__init__(precision=inner.precision, device=inner.device)
        self.inner, self.slow_calls = inner, slow_calls
        self._input, self._output = inner.input, inner.output

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.infer(batch)

    def prepare_run(self, batch: np.ndarray, *, copy_free: bool = False) -> PreparedRun:
        bound = self.inner.prepare_run(batch, copy_free=copy_free)
        calls = [0]

        def timed_call() -> float:
            calls[0] += 1
            if calls[0] in self.slow_calls:
                start = time.perf_counter()
                time.sleep(SLEEP_S)
                return bound() + (time.perf_counter() - start) * 1000.0
            return bound()

        return PreparedRun(timed_call, copies=bound.copies, timer=bound.timer)

    def describe(self) -> dict:
        return {**self.inner.describe(), "wrapped": "slow round"}

    def close(self) -> None:
        self.inner.close()
        super().close()


@pytest.fixture(scope="module")
def resnet20():
    return random_model("resnet20")


def test_slices_share_the_calls_and_the_duration() -> None:
    config = TimingConfig(warmup=4, iterations=10, duration_s=None, rounds=3)
    slices = [config.slice(i) for i in range(3)]
    assert [s.iterations for s in slices] == [4, 3, 3]
    assert [s.warmup for s in slices] == [4, 1, 1]  # full warm-up first, one re-warming call after
    timed = TimingConfig(duration_s=3.0, min_iterations=10, rounds=3).slice(1)
    assert timed.duration_s == pytest.approx(1.0) and timed.min_iterations == 4
    assert TimingConfig(iterations=2, duration_s=None, rounds=3).effective_rounds == 2
    assert "3 interleaved rounds" in config.describe()


def test_a_slow_round_is_flagged_and_gets_no_speedup(resnet20) -> None:
    # 3 rounds of 6 timed calls; warm-up 1 then 1 re-warming call per later round: round 2 is calls 9..14.
    timing = TimingConfig(warmup=1, iterations=18, duration_s=None, rounds=3)
    cases = [BenchCase("resnet20", "torch", "fp32", lambda: resnet20_engine(resnet20), artifact="(in memory)"),
             BenchCase("resnet20", "torch", "bf16", lambda: SlowRound(resnet20_engine(resnet20, "bf16"), range(9, 15)),
                       artifact="(in memory, slowed)")]
    plan = BenchPlan(cases, skipped=[])
    steps: list[int] = []
    report = run_plan(plan, batch_sizes=[1], timing=timing, include_copies=True, environment={},
                      on_step=lambda: steps.append(1))
    assert len(steps) == total_steps(plan, [1], timing) == 6
    slow = next(r for r in report.results if r.precision == "bf16")
    assert slow.rounds_calls == [6, 6, 6] and slow.iterations == 18
    assert slow.rounds_p50_ms[1] > SLEEP_S * 1000 > max(slow.rounds_p50_ms[0], slow.rounds_p50_ms[2])
    assert slow.flagged and slow.flags[0].startswith("rounds disagree")
    assert slow.speedup is None

    row = next(r for r in report.to_dict()["results"] if r["precision"] == "bf16")
    assert row["flags"] and row["speedup"] is None
    text = render_markdown(report)
    assert "flagged: rounds disagree" in text and "interleaved" in text
    console = Console(width=100, record=True)
    for table in results_tables(report):
        console.print(table)
    rendered = console.export_text()
    assert "flagged" in rendered and "torch bf16 batch 1: rounds disagree" in rendered
    assert _speedup_cell(row["flags"], None).startswith("flagged: rounds disagree")


def _row(backend: str, precision: str, batch: int, p50: float, rounds: list[float]) -> BenchResult:
    stats = LatencyStats(mean=p50, std=0.0, p50=p50, p90=p50, p95=p50, p99=p50, min=p50, max=p50)
    return BenchResult(model="m", backend=backend, precision=precision, batch_size=batch, device="cpu",
                       latency_ms=stats, throughput_ips=batch * 1000 / p50, iterations=3 * len(rounds), warmup=0,
                       copies="none (cpu)", timer="host", rounds_p50_ms=rounds, rounds_calls=[3] * len(rounds))


def test_flags_rounds_that_disagree_and_a_batch_slower_than_a_larger_one() -> None:
    steady = _row("onnxruntime", "fp32", 1, 1.0, [1.0, 1.1, 0.95])
    # The busy-machine case of issue 18: PyTorch FP32 at batch 1 slower per call than at batch 8.
    base1 = _row("torch", "fp32", 1, 604.9, [604.0, 605.0, 606.0])
    base8 = _row("torch", "fp32", 8, 9.0, [9.0, 9.1, 8.9])
    jumpy = _row("onnxruntime", "fp32", 8, 4.0, [4.0, 12.0, 4.1])
    results = [steady, base1, base8, jumpy]
    flag_results(results)
    add_speedups(results)
    assert not steady.flags and not base8.flags
    assert base1.flags and base1.flags[0].startswith("implausible: batch 1 is slower per call")
    assert jumpy.flags and "rounds disagree" in jumpy.flags[0]
    assert base1.speedup is None and jumpy.speedup is None
    assert steady.speedup is None  # its baseline (torch fp32 batch 1) is flagged: no speed-up from it
    assert base8.speedup == pytest.approx(1.0)
    data = json.loads(json.dumps(base1.to_dict()))
    assert data["flags"] == base1.flags


def test_two_artifacts_on_one_backend_and_precision_are_two_cases(tmp_path) -> None:
    """Full and mixed INT8 of one model: their rows say which artifact they are, and one is never judged
    against the other (the mixed model at batch 1 is not 'slower than a larger batch' of the full one)."""
    full1, full8 = _row("onnxruntime", "int8", 1, 1.0, [1.0] * 3), _row("onnxruntime", "int8", 8, 4.0, [4.0] * 3)
    mixed1, mixed8 = _row("onnxruntime", "int8", 1, 1.2, [1.2] * 3), _row("onnxruntime", "int8", 8, 5.0, [5.0] * 3)
    for row, path in ((full1, "full/r20.int8.cpu.onnx"), (full8, "full/r20.int8.cpu.onnx"),
                      (mixed1, "mixed/r20.int8.cpu.onnx"), (mixed8, "mixed/r20.int8.cpu.onnx")):
        row.artifact = path
    fp32 = _row("onnxruntime", "fp32", 1, 2.0, [2.0] * 3)
    fp32.artifact = "r20.onnx"
    results = [full1, full8, mixed1, mixed8, fp32]
    flag_results(results)
    assert not any(r.flags for r in results)
    report = BenchReport(environment={}, results=results, skipped=[], timing=TimingConfig(iterations=9))
    text = render_markdown(report)
    assert "| onnxruntime (full/r20.int8.cpu.onnx) | int8 | 1 |" in text
    assert "| onnxruntime (mixed/r20.int8.cpu.onnx) | int8 | 8 |" in text
    assert "| onnxruntime | fp32 | 1 |" in text  # alone on its backend and precision: no tag
    console = Console(record=True, width=160)
    for table in results_tables(report):
        console.print(table)
    assert "onnxruntime (mixed/r20.int8.cpu.onnx)" in console.export_text()
    from resnet_deploy.bench.report import _series, write_plot

    assert len(_series(results)) == 3  # the plot draws each artifact as its own series
    assert write_plot(report, tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_a_flagged_baseline_says_why_no_row_has_a_speed_up() -> None:
    """Issue 27: the PyTorch FP32 row flagged (rounds 24x apart) left every speed-up "—" with no word why."""
    from matplotlib.figure import Figure

    from resnet_deploy.bench.report import _plot_throughput

    base = _row("torch", "fp32", 1, 60.0, [20.0, 480.0, 21.0])
    ort = _row("onnxruntime", "fp32", 1, 2.0, [2.0, 2.1, 1.9])
    results = [base, ort]
    flag_results(results)
    add_speedups(results)
    assert base.flagged and not ort.flagged and ort.speedup is None
    report = BenchReport(environment={}, results=results, skipped=[], timing=TimingConfig(iterations=9))
    console = Console(record=True, width=100)
    for table in results_tables(report):
        console.print(table)
    text = console.export_text()
    assert "no base" in text and "no speed-up for any row, because the PyTorch FP32 baseline" in text
    markdown = render_markdown(report)
    assert "| — (the PyTorch FP32 baseline is flagged) |" in markdown
    assert "because the PyTorch FP32 baseline" in markdown
    demo = "\n".join(bench_rows(report.to_dict()["results"]))
    assert "| — (the PyTorch FP32 baseline is flagged) |" in demo and "No speed-up at batch 1" in demo
    axes = Figure().subplots()
    _plot_throughput(axes, "m", results)
    assert axes.get_ylabel() == "throughput, images/s"  # no bar labels: the axis promises none
    assert any("baseline is flagged" in t.get_text() for t in axes.texts)
    add_speedups([_row("torch", "fp32", 1, 60.0, [60.0] * 3), ort])
    axes = Figure().subplots()
    _plot_throughput(axes, "m", [_row("torch", "fp32", 1, 60.0, [60.0] * 3), ort])
    assert "bar label: speed-up" in axes.get_ylabel()


def test_flags_of_two_artifacts_on_one_backend_and_precision_name_the_file() -> None:
    full = _row("onnxruntime", "int8", 1, 1.0, [1.0, 9.0, 1.0])
    mixed = _row("onnxruntime", "int8", 1, 1.2, [1.2, 9.5, 1.2])
    full.artifact, mixed.artifact = "out/r20.int8.cpu.onnx", "out/r20.mixed.int8.cpu.onnx"
    flag_results([full, mixed])
    report = BenchReport(environment={}, results=[full, mixed], skipped=[], timing=TimingConfig(iterations=9))
    console = Console(record=True, width=200)
    for table in results_tables(report):
        console.print(table)
    lines = [line for line in console.export_text().splitlines() if line.startswith("flagged")]
    assert len(lines) == 2 and len(set(lines)) == 2
    assert "onnxruntime (r20.int8.cpu.onnx) int8 batch 1" in lines[0] + lines[1]
    assert "onnxruntime (r20.mixed.int8.cpu.onnx) int8 batch 1" in lines[0] + lines[1]
