"""Does bench's timed call cost more than the runtime's own measurement? Batch-1 latency, interleaved A/B.

- ONNX Runtime: bench's timed call (the engine's PreparedRun, exactly what `bench` times) against a bare loop
  of `session.run_with_iobinding` with input and output preallocated, on the same session; call by call,
  alternating which side goes first.
- PyTorch: bench's timed call against a bare `model(x)` loop under `torch.inference_mode`, same module.
- OpenVINO (`--openvino`): bench's timed call on an OpenVINOEngine against OpenVINO's own `benchmark_app
  -hint latency -b 1` on the same ONNX file (its reported median; it times the request inside OpenVINO).
  benchmark_app is a separate process, so the two alternate by rounds: ours, tool, ours, tool, ...; the
  overhead is the median of the per-round ratios and the spread of those ratios says how noisy it was.

A machine shared with other jobs moves every number; compare medians, never single calls, and read the
spread before believing a difference smaller than it. Exits 1 when a median overhead is above --limit.

    .venv/bin/python scripts/overhead_check.py --depth 50 --openvino int8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def bare_timer(call: Callable[[], object]) -> Callable[[], float]:
    clock = time.perf_counter_ns

    def timed() -> float:
        start = clock()
        call()
        return (clock() - start) / 1e6

    return timed


def compare(name: str, ours: Callable[[], float], bare: Callable[[], float], *, warmup: int, iters: int,
            rounds: int) -> dict[str, object]:
    for _ in range(warmup):
        ours()
        bare()
    samples: dict[str, list[float]] = {"ours": [], "bare": []}
    # Call by call, alternating which side goes first: a change in machine load hits both sides alike.
    for index in range(rounds * iters):
        order = (("bare", bare), ("ours", ours)) if index % 2 == 0 else (("ours", ours), ("bare", bare))
        for label, timed in order:
            samples[label].append(timed())
    ours_p50, bare_p50 = statistics.median(samples["ours"]), statistics.median(samples["bare"])
    per_round = [statistics.median(samples["ours"][i * iters:(i + 1) * iters])
                 / statistics.median(samples["bare"][i * iters:(i + 1) * iters]) for i in range(rounds)]
    return {
        "check": name,
        "bare_p50_ms": bare_p50,
        "ours_p50_ms": ours_p50,
        "bare_mean_ms": statistics.fmean(samples["bare"]),
        "ours_mean_ms": statistics.fmean(samples["ours"]),
        "overhead_pct": 100.0 * (ours_p50 / bare_p50 - 1.0),
        "overhead_pct_range": [100.0 * (min(per_round) - 1.0), 100.0 * (max(per_round) - 1.0)],
        "calls_each": len(samples["ours"]),
    }


def check_model(arch: str, *, threads: int, warmup: int, iters: int, rounds: int, workdir: Path) -> list[dict]:
    import torch

    from engines.onnxruntime_engine import OnnxRuntimeEngine
    from engines.torch_engine import TorchEngine
    from resnet_deploy.bench.timing import make_runner, random_batch
    from resnet_deploy.checkpoints import random_model
    from resnet_deploy.export import export_onnx

    loaded = random_model(arch)
    size = loaded.card.preprocessing.input_size
    batch = random_batch((1, 3, size, size))
    onnx_path = workdir / f"{arch}.onnx"
    export_onnx(loaded, onnx_path)
    results = []

    with OnnxRuntimeEngine(onnx_path, threads=threads) as engine:
        ours = make_runner(engine, batch).timed_call  # what bench times
        results.append({"model": arch, **compare("onnxruntime: bench vs bare IOBinding loop", ours,
                                                  bare_iobinding(engine.session, batch), warmup=warmup, iters=iters,
                                                  rounds=rounds)})

    with TorchEngine(loaded.model, input_shape=(3, size, size), num_classes=loaded.card.num_classes,
                     threads=threads) as engine:
        module, x = engine.module, torch.from_numpy(batch)

        def bare_call() -> object:
            with torch.inference_mode():
                return module(x)

        ours = make_runner(engine, batch).timed_call
        results.append({"model": arch, **compare("torch: bench vs bare model(x)", ours, bare_timer(bare_call),
                                                  warmup=warmup, iters=iters, rounds=rounds)})
    return results


def bare_iobinding(session: object, batch: object) -> Callable[[], float]:
    """ONNX Runtime's own fastest host loop: input and output bound once, then `run_with_iobinding`."""
    import numpy as np
    import onnxruntime as ort

    staged = np.ascontiguousarray(batch)
    binding = session.io_binding()  # type: ignore[attr-defined]
    value = ort.OrtValue.ortvalue_from_numpy(staged, "cpu", 0)
    binding.bind_ortvalue_input(session.get_inputs()[0].name, value)  # type: ignore[attr-defined]
    output = session.get_outputs()[0]  # type: ignore[attr-defined]
    out_value = ort.OrtValue.ortvalue_from_shape_and_type([staged.shape[0], output.shape[1]], np.float32, "cpu", 0)
    binding.bind_ortvalue_output(output.name, out_value)  # the output preallocated too
    run = session.run_with_iobinding  # type: ignore[attr-defined]
    timed = bare_timer(lambda: run(binding))
    timed.keep = (staged, value, out_value, binding)  # type: ignore[attr-defined]
    return timed


def benchmark_app_median(onnx_path: Path, *, iters: int, precision: str) -> float:
    """OpenVINO's benchmark_app, latency hint, batch 1, on the ONNX file: its median latency in ms. (It refuses
    -nthreads with a hint, so both sides run OpenVINO's own thread choice for the latency hint.)"""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    command = [exe, "-m", str(onnx_path), "-d", "CPU", "-hint", "latency", "-b", "1", "-niter", str(iters)]
    if precision in ("fp32", "bf16"):
        command += ["-infer_precision", {"fp32": "f32", "bf16": "bf16"}[precision]]
    out = subprocess.run(command, capture_output=True, text=True, timeout=900)
    match = re.search(r"Median:\s+([\d.]+)\s*ms", out.stdout)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"benchmark_app failed (exit {out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")
    return float(match.group(1))


def check_openvino(arch: str, precision: str, *, warmup: int, iters: int, rounds: int,
                   cache_dir: Path) -> dict[str, object]:
    """bench's OpenVINO row (its engine, its timed call) against benchmark_app on the same ONNX, by rounds."""
    from engines.openvino_engine import OpenVINOEngine
    from resnet_deploy.bench.cache import ArtifactCache
    from resnet_deploy.bench.timing import make_runner, random_batch
    from resnet_deploy.checkpoints import random_model

    loaded = random_model(arch)
    cache = ArtifactCache(cache_dir, loaded, calib_data=None, calib_samples=None,
                          progress=lambda m: print(m, file=sys.stderr))
    onnx_path = cache.int8_onnx() if precision == "int8" else cache.fp32_onnx()
    hint = {"fp32": "f32", "bf16": "bf16"}.get(precision)
    size = loaded.card.preprocessing.input_size
    ours_medians: list[float] = []
    tool_medians: list[float] = []
    paired: list[float] = []  # per call: bench's host time minus OpenVINO's own latency of the same call
    inside: list[float] = []
    with OpenVINOEngine(onnx_path, device="cpu", performance_hint="LATENCY", inference_precision=hint) as engine:
        timed = make_runner(engine, random_batch((1, 3, size, size))).timed_call
        request = timed.keep[1]  # the bound run's infer request (engines/openvino_engine.py)
        for _ in range(warmup):
            timed()
        for index in range(rounds):
            ours = []
            for _ in range(iters):
                ours.append(timed())
                inside.append(request.latency)
                paired.append(ours[-1] - request.latency)
            tool = benchmark_app_median(onnx_path, iters=iters, precision=precision)
            ours_medians.append(statistics.median(ours))
            tool_medians.append(tool)
            print(f"  round {index + 1}/{rounds}: bench {ours_medians[-1]:.3f} ms, benchmark_app {tool:.3f} ms",
                  file=sys.stderr)
    ratios = [o / t for o, t in zip(ours_medians, tool_medians, strict=True)]
    return {"model": arch, "check": f"openvino {precision}: bench vs benchmark_app -hint latency -b 1",
            "bare_p50_ms": statistics.median(tool_medians), "ours_p50_ms": statistics.median(ours_medians),
            "overhead_pct": 100.0 * (statistics.median(ratios) - 1.0),
            "overhead_pct_range": [100.0 * (min(ratios) - 1.0), 100.0 * (max(ratios) - 1.0)],
            "rounds_ours_ms": ours_medians, "rounds_tool_ms": tool_medians, "calls_each": iters * rounds,
            # Noise-free: the same calls timed by bench and by OpenVINO itself (benchmark_app reports the latter).
            "paired_overhead_ms": statistics.median(paired),
            "paired_overhead_pct": 100.0 * statistics.median(paired) / statistics.median(inside)}


def wrapper_cost_us(calls: int = 200_000) -> float:
    """What bench's timed-call wrapper (`engines.base.host_timed`) adds to a bare timed call, in microseconds:
    measured on a no-op, so the machine's load on a real model does not hide it."""
    from engines.base import host_timed

    def noop() -> None:
        return None

    ours, bare = host_timed(noop, noop), bare_timer(noop)
    a = [ours() for _ in range(calls)]
    b = [bare() for _ in range(calls)]
    return 1000.0 * (statistics.median(a) - statistics.median(b))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, action="append", help="ResNet depth (repeatable; default 50 and 20)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=100, help="timed calls per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--openvino", action="append", choices=("fp32", "bf16", "int8"),
                        help="also compare bench's OpenVINO row at this precision with benchmark_app (repeatable)")
    parser.add_argument("--skip-bare", action="store_true", help="only the --openvino comparisons")
    parser.add_argument("--cache-dir", type=Path, default=None, help="bench's artifact cache [default: bench's]")
    parser.add_argument("--limit", type=float, default=2.0, help="allowed overhead in percent (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    from resnet_deploy.bench.cache import default_cache_dir
    from resnet_deploy.environment import capture_environment, machine_load
    from resnet_deploy.models import arch_from_depth

    archs = [arch_from_depth(d) for d in (args.depth or [50, 20])]
    results: list[dict] = []
    load_before = machine_load()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            print(f"checking {arch} ...", file=sys.stderr)
            if not args.skip_bare:
                results += check_model(arch, threads=args.threads, warmup=args.warmup, iters=args.iters,
                                       rounds=args.rounds, workdir=Path(tmp))
            for precision in args.openvino or []:
                results.append(check_openvino(arch, precision, warmup=args.warmup,
                                              iters=args.iters, rounds=args.rounds,
                                              cache_dir=args.cache_dir or default_cache_dir()))
    failed = [r for r in results if r["overhead_pct"] > args.limit]
    load = {"before": load_before, "after": machine_load()}
    if args.json:
        print(json.dumps({"environment": {**capture_environment(), "load": load}, "threads": args.threads,
                          "limit_pct": args.limit, "results": results, "passed": not failed}, indent=2))
    else:
        print(f"batch 1, {args.threads} threads, {args.rounds} rounds x {args.iters} calls per side, median latency; "
              f"load average before {load_before['load_average']}, after {load['after']['load_average']}")
        print(f"{'model':<10} {'check':<56} {'ref ms':>8} {'bench ms':>8} {'overhead':>9}  per-round range")
        for r in results:
            flag = "  > limit" if r in failed else ""
            low, high = r["overhead_pct_range"]
            print(f"{r['model']:<10} {r['check']:<56} {r['bare_p50_ms']:>8.3f} {r['ours_p50_ms']:>8.3f} "
                  f"{r['overhead_pct']:>+8.1f}%  {low:+.1f}..{high:+.1f}%{flag}")
        for r in results:
            if "paired_overhead_ms" in r:
                print(f"{r['model']:<10} openvino: same calls, bench's clock minus OpenVINO's own latency: "
                      f"{r['paired_overhead_ms'] * 1000:+.0f} us per call ({r['paired_overhead_pct']:+.2f}%)")
        wrapper = wrapper_cost_us()
        print(f"bench's timing wrapper on a no-op call: {wrapper:+.2f} us per call over a bare timed no-op")
        print("passed" if not failed else f"FAILED: median overhead above {args.limit:g} %")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
