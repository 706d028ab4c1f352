"""`bench --url`: models served by a Triton server, as one library call: `run_served_bench(ServedBenchRequest)`.

Every model is described (and so known to be ready) before anything is measured; then each concurrency level
runs for a bounded time and number of requests, then the LoadGen scenarios asked for, through the same
engine contract the in-process bench uses (`serving.client.ServedEngine`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resnet_deploy.bench.request import DEFAULT_DURATION_S, ServedBenchRequest, check_served_request


@dataclass
class ServedBenchReport:
    url: str
    rows: list[Any]  # serving.client.ConcurrencyResult, per model and concurrency level
    scenarios: list[Any] = field(default_factory=list)  # bench.loadgen.ScenarioResult

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "served": [r.to_dict() for r in self.rows],
                "scenarios": [r.to_dict() for r in self.scenarios]}


def run_served_bench(request: ServedBenchRequest,
                     info: Callable[[str], None] = lambda message: None) -> ServedBenchReport:
    """Measure every served model at every concurrency level, then the scenarios; `info` gets a line per step."""
    from resnet_deploy.serving.client import describe_served, measure_concurrency

    check_served_request(request)
    seconds = request.duration if request.duration is not None else DEFAULT_DURATION_S
    if "server" in request.scenarios:
        from resnet_deploy.bench.loadgen import check_server_numbers

        check_server_numbers(request.target_qps, request.target_latency_ms, seconds)
    if request.scenarios:
        from resnet_deploy.bench.loadgen import require_loadgen

        require_loadgen()
    served = [describe_served(request.url, model) for model in request.models]  # all ready before measuring
    rows = []
    for model in served:
        for level in request.concurrency:
            info(f"{model.name} at {request.url}: {level} in flight for {seconds:g} s "
                 f"(at most {request.max_requests} requests)")
            rows.append(measure_concurrency(model, level, duration_s=seconds, max_requests=request.max_requests))
    return ServedBenchReport(url=request.url, rows=rows,
                             scenarios=_served_scenarios(served, request, seconds, info))


def _served_scenarios(served: list[Any], request: ServedBenchRequest, seconds: float,
                      info: Callable[[str], None]) -> list[Any]:
    if not request.scenarios:
        return []
    from resnet_deploy.bench.loadgen import PERFORMANCE_SAMPLES, ScenarioSettings, expected_latency_ms, find_peak_qps
    from resnet_deploy.serving.client import ServedEngine, sample_batch

    results = []
    for model in served:
        batch = max(1, min(8, model.max_batch))
        options = ScenarioSettings(duration_s=seconds, min_queries=1, target_qps=request.target_qps,
                                   target_latency_ms=request.target_latency_ms, offline_batch=batch,
                                   server_batch=batch)
        with ServedEngine(model) as engine:
            samples = sample_batch(model, PERFORMANCE_SAMPLES)
            expected = expected_latency_ms(engine, samples)
            for name in request.scenarios:
                info(f"LoadGen {name}: {model.name} at {model.url}")
                run = functools.partial(_served_run, engine, samples, name, options, model, expected)
                start_qps = request.target_qps or max(1.0, 500.0 / expected)
                if name == "server" and request.peak_qps:
                    results.append(find_peak_qps(run, start_qps))
                else:
                    results.append(run(start_qps if name == "server" else None))
    return results


def _served_run(engine: Any, samples: Any, name: str, options: Any, model: Any, expected: float,
                qps: float | None) -> Any:
    from resnet_deploy.bench.loadgen import run_scenario

    return run_scenario(engine, samples, name, options, model=model.name, artifact=model.url, expected_ms=expected,
                        target_qps=qps)
