"""Does our engine layer add overhead? Batch-1 latency through `bench`'s timed call vs a bare loop.

For each model: our ONNX Runtime engine (`engine.infer` + synchronize, exactly what `bench` times) against
a bare `session.run` loop on the same session (same model, same graph optimizations, same threads); our
PyTorch engine against a bare `model(x)` loop under `torch.inference_mode` on the same module and
threads. Bare and wrapped calls alternate one by one so a change in machine load hits both. Exits 1 when
a wrapper is more than --limit (default 5 %) slower by median latency.

    .venv/bin/python scripts/overhead_check.py --depth 50 --depth 20 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    return {
        "check": name,
        "bare_p50_ms": bare_p50,
        "ours_p50_ms": ours_p50,
        "bare_mean_ms": statistics.fmean(samples["bare"]),
        "ours_mean_ms": statistics.fmean(samples["ours"]),
        "overhead_pct": 100.0 * (ours_p50 / bare_p50 - 1.0),
        "calls_each": len(samples["ours"]),
    }


def check_model(arch: str, *, threads: int, warmup: int, iters: int, rounds: int, workdir: Path) -> list[dict]:
    import torch

    from engines.onnxruntime_engine import OnnxRuntimeEngine
    from engines.torch_engine import TorchEngine
    from resnet_deploy.bench.timing import host_runner, random_batch
    from resnet_deploy.checkpoints import random_model
    from resnet_deploy.export import export_onnx

    loaded = random_model(arch)
    size = loaded.card.preprocessing.input_size
    batch = random_batch((1, 3, size, size))
    onnx_path = workdir / f"{arch}.onnx"
    export_onnx(loaded, onnx_path)
    results = []

    with OnnxRuntimeEngine(onnx_path, threads=threads) as engine:
        session, names, feed = engine.session, [engine.output.name], {engine.input.name: batch}
        ours = host_runner(engine, batch, copies="none (cpu)").timed_call
        bare = bare_timer(lambda: session.run(names, feed))
        results.append({"model": arch, **compare("onnxruntime: engine vs bare session.run", ours, bare,
                                                  warmup=warmup, iters=iters, rounds=rounds)})

    with TorchEngine(loaded.model, input_shape=(3, size, size), num_classes=loaded.card.num_classes,
                     threads=threads) as engine:
        module, x = engine.module, torch.from_numpy(batch)

        def bare_call() -> object:
            with torch.inference_mode():
                return module(x)

        ours = host_runner(engine, batch, copies="none (cpu)").timed_call
        results.append({"model": arch, **compare("torch: engine vs bare model(x)", ours, bare_timer(bare_call),
                                                  warmup=warmup, iters=iters, rounds=rounds)})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, action="append", help="ResNet depth (repeatable; default 50 and 20)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=100, help="timed calls per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=float, default=5.0, help="allowed overhead in percent (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    from resnet_deploy.environment import capture_environment
    from resnet_deploy.models import arch_from_depth

    archs = [arch_from_depth(d) for d in (args.depth or [50, 20])]
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            print(f"checking {arch} ...", file=sys.stderr)
            results += check_model(arch, threads=args.threads, warmup=args.warmup, iters=args.iters,
                                   rounds=args.rounds, workdir=Path(tmp))
    failed = [r for r in results if r["overhead_pct"] > args.limit]
    if args.json:
        print(json.dumps({"environment": capture_environment(), "threads": args.threads, "limit_pct": args.limit,
                          "results": results, "passed": not failed}, indent=2))
    else:
        print(f"batch 1, {args.threads} threads, {results[0]['calls_each']} calls per side, median latency")
        print(f"{'model':<10} {'check':<42} {'bare ms':>9} {'ours ms':>9} {'overhead':>9}")
        for r in results:
            flag = "  > limit" if r in failed else ""
            print(f"{r['model']:<10} {r['check']:<42} {r['bare_p50_ms']:>9.3f} {r['ours_p50_ms']:>9.3f} "
                  f"{r['overhead_pct']:>+8.1f}%{flag}")
        print("passed" if not failed else f"FAILED: overhead above {args.limit:g} %")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
