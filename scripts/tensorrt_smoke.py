"""TensorRT smoke run: the first minutes on a GPU with TensorRT answer every open TensorRT question in one run.

    python scripts/tensorrt_smoke.py [OUT] [--budget SECONDS] [--skip CHECK ...]

OUT defaults to $OUT, else ./tensorrt-smoke. Needs `pip install 'resnet-deploy[tensorrt]'` and a CUDA
build of torch; no data set (a random-weight ResNet-20, INT8 calibrated on random images). Every check
runs on its own (one failing never stops the next), each result is added to OUT/results.json as soon as
it is known (a check that takes the process down stays marked "running"), and checks that would start
after --budget seconds are skipped and say so. The open questions of issue 17, one check each:

  environment        TensorRT/torch/CUDA/GPU versions; which API members exist (STRONGLY_TYPED,
                     EXPLICIT_BATCH, weak-typing flags, HardwareCompatibilityLevel, device_memory_size_v2,
                     EngineInspector.execution_context, ILogger.Severity)
  models             FP32 export, FP16 (production convert_fp16), INT8 (production quantize_int8, random
                     calibration): element types fed to each DequantizeLinear (no INT32)
  build_fp32/16/int8 production build_tensorrt_engine: realized precisions, verdict, plan header vs version
  inspector          inspector JSON without and with an execution context (opt shape), saved under
                     OUT/inspector/; top-level, per-layer and per-tensor keys, layer types, precision counts
  version_compatible a VERSION_COMPATIBLE plan: header bytes (the unverified layout), whether it loads
                     without engine_host_code_allowed, reopened through TensorRTEngine, logits vs ordinary
  hardware_*         AMPERE_PLUS and SAME_COMPUTE_CAPABILITY plans built, reopened, compared
  timing_cache       reuse (status, seconds), then a corrupted, a truncated and a garbage cache: what the
                     raw API does (create_timing_cache / set_timing_cache) and what build-engine reports
  cuda_graph         CUDA-graph re-capture across batch sizes 4 → 7 → 4 (infer, and prepare/run_prepared)
                     against plain runs, FP32 and FP16
  device_memory      device_memory_size_v2 / device_memory_size of each plan
  pytest_gpu         `pytest -m gpu tests/test_tensorrt_gpu.py` in what is left of the budget

Exit status: 0 when every check that ran passed, 1 when one failed, 2 when TensorRT is not usable here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from resnet_deploy.atomic import write_bytes, write_text  # noqa: E402 - after the path set-up above

OPT, MAX = 4, 8  # batch profile 1..MAX, opt OPT: small and quick to build
DQ_INPUT_TYPES = frozenset({"INT8", "FLOAT8E4M3FN", "FLOAT4E2M1", "INT4"})  # onnx-tensorrt operators.md


class CheckFailed(Exception):
    """A check ran and its answer is 'no'."""


@dataclass
class Smoke:
    out: Path
    deadline: float
    results: dict[str, Any] = field(default_factory=dict)
    onnx: dict[str, Path] = field(default_factory=dict)
    plans: dict[str, Path] = field(default_factory=dict)
    skip: frozenset[str] = frozenset()
    pytest_slack: int = 120  # seconds past the deadline the last check (the GPU tests) may run
    trt: Any = None

    def save(self) -> None:
        write_text(self.out / "results.json", json.dumps(self.results, indent=2, default=str) + "\n")

    def run(self, name: str, check: Callable[[Smoke], dict[str, Any]], *, onnx: tuple[str, ...] = (),
            plans: tuple[str, ...] = ()) -> None:
        started = time.monotonic()
        missing = [f"the {n} ONNX" for n in onnx if n not in self.onnx]
        missing += [f"the {n} plan" for n in plans if n not in self.plans]
        if name in self.skip:
            entry: dict[str, Any] = {"status": "skipped", "reason": "--skip"}
        elif started > self.deadline:
            entry = {"status": "skipped", "reason": "over the time budget"}
        elif missing:
            entry = {"status": "skipped", "reason": f"needs {', '.join(missing)}, which an earlier check did not make"}
        else:
            # Marked first: if TensorRT takes the process down, results.json still says which check did it.
            self.results[name] = {"status": "running (a crash here took the process down)"}
            self.save()
            try:
                entry = {"status": "ok", **check(self)}
            except CheckFailed as exc:
                entry = {"status": "failed", "reason": str(exc)}
            except Exception as exc:  # one broken check must not hide the answers of the others
                entry = {"status": "error", "reason": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc().splitlines()[-12:]}
        entry["seconds"] = round(time.monotonic() - started, 2)
        self.results[name] = entry
        self.save()
        print(f"{name:<32} {entry['status']:<8} {entry['seconds']:>7.1f}s  {entry.get('reason', '')}",
              file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Helpers


def header_info(plan: bytes) -> dict[str, Any]:
    from engines.tensorrt.support import read_plan_version

    return {"first_32_bytes": plan[:32].hex(" ", 4), "read_plan_version": read_plan_version(plan[:28]),
            "size_bytes": len(plan)}


def images(n: int, seed: int = 0) -> Any:
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def keys_of(info: Any) -> dict[str, Any]:
    """Top-level, per-layer and per-tensor keys of an inspector JSON, and its layer types."""
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers", []) if isinstance(data, dict) else data
    layer_keys: Counter[str] = Counter()
    tensor_keys: Counter[str] = Counter()
    types: Counter[str] = Counter()
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict):
            continue
        layer_keys.update(layer.keys())
        types[str(layer.get("LayerType", "?"))] += 1
        for side in ("Inputs", "Outputs"):
            for tensor in layer.get(side) or []:
                if isinstance(tensor, dict):
                    tensor_keys.update(tensor.keys())
    return {"top_level": sorted(data) if isinstance(data, dict) else ["<list>"], "layers": len(layers),
            "layer_keys": dict(layer_keys), "tensor_keys": dict(tensor_keys), "layer_types": dict(types)}


def open_engine(trt: Any, plan: bytes, *, host_code: bool) -> tuple[Any, Any, Any]:
    from engines.tensorrt.support import make_logger

    logger = make_logger(trt)
    runtime = trt.Runtime(logger)
    if host_code:
        runtime.engine_host_code_allowed = True
    return runtime.deserialize_cuda_engine(plan), runtime, logger


def input_name(trt: Any, engine: Any) -> str:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)


def max_diff(a: Any, b: Any) -> float:
    import numpy as np

    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def build(smoke: Smoke, name: str, onnx: str, precision: str, **options: Any) -> dict[str, Any]:
    from resnet_deploy.targets.tensorrt import TensorRTBuildOptions, build_tensorrt_engine

    plan = smoke.out / "plans" / f"{name}.plan"
    opts = TensorRTBuildOptions(min_batch=1, opt_batch=OPT, max_batch=MAX, **options)
    result = build_tensorrt_engine(smoke.onnx[onnx], plan, precision=precision, options=opts)
    smoke.plans[name] = plan
    return {"result": result.to_dict(), "header": header_info(plan.read_bytes())}


# --------------------------------------------------------------------------------------------------
# Checks


def check_environment(smoke: Smoke) -> dict[str, Any]:
    import torch

    from engines.tensorrt.support import MIN_VERSION, parse_version
    from resnet_deploy.environment import gpu_info, library_versions

    trt = smoke.trt
    props = torch.cuda.get_device_properties(0)

    def enum_members(owner: Any, name: str) -> list[str]:
        return sorted(getattr(getattr(owner, name, None), "__members__", {}))

    def attributes(cls: Any, names: tuple[str, ...]) -> list[str]:
        return [n for n in names if cls is not None and hasattr(cls, n)]

    members = {
        "NetworkDefinitionCreationFlag": enum_members(trt, "NetworkDefinitionCreationFlag"),
        "BuilderFlag": enum_members(trt, "BuilderFlag"),
        "HardwareCompatibilityLevel": enum_members(trt, "HardwareCompatibilityLevel"),
        "ILogger.Severity": enum_members(trt.ILogger, "Severity"),
        "ICudaEngine": attributes(getattr(trt, "ICudaEngine", None), (
            "device_memory_size", "device_memory_size_v2", "create_engine_inspector")),
        "EngineInspector": attributes(getattr(trt, "EngineInspector", None), (
            "execution_context", "engine", "context")),
        "Runtime": attributes(getattr(trt, "Runtime", None), ("engine_host_code_allowed",)),
    }
    return {"tensorrt": trt.__version__, "meets_min_version": parse_version(trt.__version__)[:2] >= MIN_VERSION,
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "gpu": props.name,
            "compute_capability": f"{props.major}.{props.minor}", "gpu_info": gpu_info(),
            "libraries": library_versions(), "api_members": members}


def dequantize_input_types(path: Path) -> dict[str, int]:
    import onnx

    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.value_info, *graph.input, *graph.output):
        types.setdefault(info.name, info.type.tensor_type.elem_type)
    found = Counter(onnx.TensorProto.DataType.Name(types.get(n.input[0], 0))
                    for n in graph.node if n.op_type == "DequantizeLinear")
    return dict(found)


def check_models(smoke: Smoke) -> dict[str, Any]:
    from resnet_deploy.checkpoints import random_model
    from resnet_deploy.export import export_onnx
    from resnet_deploy.precision import convert_fp16, quantize_int8

    folder = smoke.out / "onnx"
    smoke.onnx["fp32"] = export_onnx(random_model("resnet20"), folder / "resnet20.onnx").path
    smoke.onnx["fp16"] = convert_fp16(smoke.onnx["fp32"], folder / "resnet20.fp16.onnx").path
    smoke.onnx["int8"] = quantize_int8(smoke.onnx["fp32"], folder / "resnet20.int8.onnx", calib_data=None,
                                       samples=32, check_samples=16, random_calibration=True).path
    dq = dequantize_input_types(smoke.onnx["int8"])
    answer = {"onnx": {k: str(v) for k, v in smoke.onnx.items()}, "int8_dequantize_input_types": dq}
    if not set(dq) <= DQ_INPUT_TYPES:
        raise CheckFailed(f"the INT8 model feeds {dq} into DequantizeLinear; TensorRT accepts {sorted(DQ_INPUT_TYPES)}")
    return answer


def check_build(precision: str) -> Callable[[Smoke], dict[str, Any]]:
    def run(smoke: Smoke) -> dict[str, Any]:
        from engines.tensorrt.support import header_version, parse_version

        cache = {"timing_cache": smoke.out / "timing.cache"} if precision == "fp32" else {}
        answer = build(smoke, precision, precision, precision, **cache)
        expected = header_version(parse_version(smoke.trt.__version__))
        answer["header_matches_version"] = answer["header"]["read_plan_version"] == expected
        if not answer["result"]["precision_check"].get("verified", False):
            raise CheckFailed(f"realized precision not verified: {answer['result']['precision_check']}")
        return answer

    return run


def check_inspector(smoke: Smoke) -> dict[str, Any]:
    from engines.tensorrt.build import engine_information
    from engines.tensorrt.inspect import precision_verdict, summarize_engine_information

    trt, folder, answer = smoke.trt, smoke.out / "inspector", {}
    for name, plan in smoke.plans.items():
        if name not in ("fp32", "fp16", "int8"):
            continue
        engine, runtime, _ = open_engine(trt, plan.read_bytes(), host_code=False)
        inspector = engine.create_engine_inspector()
        bare = str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        del inspector
        with_context = engine_information(trt, engine, input_name(trt, engine), (OPT, 3, 32, 32))
        del engine, runtime
        per: dict[str, Any] = {}
        for label, text in (("no_context", bare), ("context", with_context)):
            write_text(folder / f"{name}.{label}.json", text)
            summary = summarize_engine_information(text)
            per[label] = {**keys_of(text), "counts": summary.counts, "detailed": summary.detailed,
                          "verdict": precision_verdict(summary, name).to_dict()}
            print(f"  inspector {name} {label}: layer keys {sorted(per[label]['layer_keys'])}; tensor keys "
                  f"{sorted(per[label]['tensor_keys'])}; counts {summary.counts}", flush=True)
        answer[name] = per
    return answer


def check_version_compatible(smoke: Smoke) -> dict[str, Any]:
    from engines.tensorrt.engine import TensorRTEngine
    from engines.tensorrt.manifest import read_manifest, trusted_plan_version
    from engines.tensorrt.support import header_version, parse_version

    answer = build(smoke, "fp32.vc", "fp32", "fp32", version_compatible=True)
    plan = smoke.plans["fp32.vc"].read_bytes()
    # The open question: does a version-compatible plan's header read as documented for ordinary plans?
    answer["header_matches_version"] = answer["header"]["read_plan_version"] == header_version(
        parse_version(smoke.trt.__version__))
    answer["ordinary_header"] = header_info(smoke.plans["fp32"].read_bytes()) if "fp32" in smoke.plans else None
    answer["trusted_plan_version"] = trusted_plan_version(plan, read_manifest(smoke.plans["fp32.vc"]))
    engine, runtime, logger = open_engine(smoke.trt, plan, host_code=False)
    answer["loads_without_host_code_allowed"] = engine is not None
    answer["log_without_host_code"] = logger.warnings()[-5:]
    del engine, runtime
    batch = images(OPT, seed=1)
    with TensorRTEngine(smoke.plans["fp32.vc"]) as vc:
        got = vc.infer(batch)
    if "fp32" in smoke.plans:
        with TensorRTEngine(smoke.plans["fp32"]) as ordinary:
            answer["max_abs_diff_vs_ordinary"] = max_diff(got, ordinary.infer(batch))
    return answer


def check_hardware(level: str) -> Callable[[Smoke], dict[str, Any]]:
    def run(smoke: Smoke) -> dict[str, Any]:
        from engines.tensorrt.engine import TensorRTEngine

        name = f"fp32.{level}"
        answer = build(smoke, name, "fp32", "fp32", hardware_compatibility=level)
        batch = images(OPT, seed=2)
        with TensorRTEngine(smoke.plans[name]) as engine:
            got = engine.infer(batch)
            answer["describe"] = engine.describe()
        if "fp32" in smoke.plans:
            with TensorRTEngine(smoke.plans["fp32"]) as ordinary:
                answer["max_abs_diff_vs_ordinary"] = max_diff(got, ordinary.infer(batch))
        return answer

    return run


def raw_timing_cache(trt: Any, data: bytes) -> dict[str, Any]:
    """What TensorRT's own API does with these cache bytes (before our fallback hides it)."""
    from engines.tensorrt.support import make_logger

    logger = make_logger(trt)
    config = trt.Builder(logger).create_builder_config()
    try:
        cache = config.create_timing_cache(data)
    except Exception as exc:
        return {"create_timing_cache": f"raised {type(exc).__name__}: {exc}", "log": logger.tail()[-5:]}
    if cache is None:
        return {"create_timing_cache": "returned None", "log": logger.tail()[-5:]}
    accepted = config.set_timing_cache(cache, False)
    return {"create_timing_cache": "returned a cache", "set_timing_cache": bool(accepted), "log": logger.tail()[-5:]}


def check_timing_cache(smoke: Smoke) -> dict[str, Any]:
    import shutil

    source = smoke.out / "timing.cache"
    if not source.is_file():
        raise CheckFailed("the FP32 build left no timing cache")
    good = source.read_bytes()
    middle = len(good) // 2
    variants = {
        "reused": good,
        "corrupted": good[:middle] + bytes(b ^ 0xFF for b in good[middle:middle + 64]) + good[middle + 64:],
        "truncated": good[:middle],
        "garbage": os.urandom(len(good)),
    }
    answer: dict[str, Any] = {"size_bytes": len(good), "first_build": smoke.results.get("build_fp32", {}).get(
        "result", {}).get("timing_cache_status")}
    for label, data in variants.items():
        path = smoke.out / "caches" / f"{label}.cache"
        write_bytes(path, data)
        entry: dict[str, Any] = {"raw": raw_timing_cache(smoke.trt, data)}
        try:
            built = build(smoke, f"fp32.cache-{label}", "fp32", "fp32", timing_cache=path)
            result = built["result"]
            entry.update(status=result["timing_cache_status"], build_seconds=result["build_seconds"],
                         warnings=result["warnings"][-5:], cache_rewritten_bytes=path.stat().st_size)
        except Exception as exc:  # a build that fails on a bad cache is itself the answer
            entry["build_error"] = f"{type(exc).__name__}: {exc}"
        answer[label] = entry
    shutil.rmtree(smoke.out / "caches", ignore_errors=True)
    if answer["reused"].get("status") != "loaded":
        raise CheckFailed(f"a good cache was not reused: {answer['reused']}")
    return answer


def count_captures(engine: Any) -> list[int]:
    """Count the engine's graph captures (a diagnostic wrapper on this one instance)."""
    count = [0]
    capture = engine._capture

    def counted(slot: Any) -> None:
        count[0] += 1
        capture(slot)

    engine._capture = counted
    return count


def graph_sequence(plan: Path, batches: tuple[int, ...]) -> dict[str, Any]:
    from engines.tensorrt.engine import TensorRTEngine

    inputs = {n: images(n, seed=n) for n in set(batches)}
    with TensorRTEngine(plan) as plain:
        want = {n: plain.infer(x) for n, x in inputs.items()}
    steps = []
    with TensorRTEngine(plan, cuda_graph=True) as graphed:
        captures = count_captures(graphed)
        for n in batches:
            got = graphed.infer(inputs[n])
            described = graphed.describe()
            steps.append({"batch": n, "max_abs_diff": max_diff(got, want[n]), "captures_so_far": captures[0],
                          "cuda_graph": described["cuda_graph"], "fallback": described["cuda_graph_fallback"]})
    prepared_steps = []
    with TensorRTEngine(plan, include_copies=False, cuda_graph=True) as engine:
        prepared = {n: engine.prepare(x) for n, x in inputs.items()}
        for n in batches:
            engine.run_prepared(prepared[n])
            prepared_steps.append({"batch": n, "max_abs_diff": max_diff(engine.fetch(prepared[n]), want[n])})
    return {"infer": steps, "prepared": prepared_steps}


def check_cuda_graph(smoke: Smoke) -> dict[str, Any]:
    answer = {name: graph_sequence(smoke.plans[name], (4, 7, 4)) for name in ("fp32", "fp16") if name in smoke.plans}
    worst = max((step["max_abs_diff"] for runs in answer.values() for steps in runs.values() for step in steps),
                default=0.0)
    answer["worst_max_abs_diff"] = worst
    if worst > 1e-3:
        raise CheckFailed(f"graph replay differs from plain runs by {worst} after re-capture (see the steps)")
    return answer


def check_device_memory(smoke: Smoke) -> dict[str, Any]:
    from engines.tensorrt.support import device_memory_bytes

    answer = {}
    for name, plan in smoke.plans.items():
        engine, runtime, _ = open_engine(smoke.trt, plan.read_bytes(), host_code=name.endswith(".vc"))
        answer[name] = {"bytes": device_memory_bytes(engine) if engine is not None else None,
                        "has_v2": hasattr(engine, "device_memory_size_v2")}
        del engine, runtime
    return answer


def check_pytest(smoke: Smoke) -> dict[str, Any]:
    left = int(smoke.deadline - time.monotonic()) + smoke.pytest_slack
    if left < 60:
        raise CheckFailed(f"only {left}s left; run `pytest -m gpu tests/test_tensorrt_gpu.py` by hand")
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_tensorrt_gpu.py", "-q", "-p",
               "no:cacheprovider", "-rs"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=left, env=env)
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"pytest ran past {left}s") from exc
    log = done.stdout + done.stderr
    write_text(smoke.out / "pytest-gpu.log", log)
    answer = {"returncode": done.returncode, "tail": log.splitlines()[-15:]}
    if done.returncode != 0:
        raise CheckFailed(f"pytest exited {done.returncode}: {log.splitlines()[-1] if log else ''}")
    return answer


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT") or "tensorrt-smoke",
                        help="folder for the results (default: $OUT, else ./tensorrt-smoke)")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds after which no further check starts (default 480); the GPU tests, last, "
                             "may run 120 s past it")
    parser.add_argument("--skip", action="append", default=[], metavar="CHECK",
                        help="a check not to run (repeatable), e.g. --skip timing_cache --skip pytest_gpu")
    args = parser.parse_args(argv)
    smoke = Smoke(out=Path(args.out), deadline=time.monotonic() + args.budget, skip=frozenset(args.skip))
    smoke.out.mkdir(parents=True, exist_ok=True)

    from resnet_deploy.targets.tensorrt import tensorrt_usable

    usable, reason = tensorrt_usable()
    smoke.results["preflight"] = {"status": "ok" if usable else "unavailable", "reason": reason}
    smoke.save()
    if not usable:
        print(f"error: TensorRT is not available ({reason}); results in {smoke.out}/results.json", file=sys.stderr)
        return 2
    import tensorrt

    smoke.trt = tensorrt
    smoke.run("environment", check_environment)
    smoke.run("models", check_models)
    for precision in ("fp32", "fp16", "int8"):
        smoke.run(f"build_{precision}", check_build(precision), onnx=(precision,))
    smoke.run("inspector", check_inspector, plans=("fp32",))
    smoke.run("cuda_graph", check_cuda_graph, plans=("fp32",))
    smoke.run("version_compatible", check_version_compatible, onnx=("fp32",))
    for level in ("ampere_plus", "same_compute_capability"):
        smoke.run(f"hardware_{level}", check_hardware(level), onnx=("fp32",))
    smoke.run("device_memory", check_device_memory)
    # Corrupt caches last but one: should TensorRT crash on one, the answers above are already saved.
    smoke.run("timing_cache", check_timing_cache, onnx=("fp32",), plans=("fp32",))
    smoke.run("pytest_gpu", check_pytest)
    bad = [name for name, entry in smoke.results.items() if entry.get("status") in ("failed", "error")]
    print(f"{'failed: ' + ', '.join(bad) if bad else 'all checks passed'}; results in {smoke.out}/results.json",
          file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
