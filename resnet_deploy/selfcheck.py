"""An artifact's self-check: a few inputs and the logits they must give, carried in its manifest.

A CPU artifact is verified on the machine that built it; another class of CPU (`precision/isa.py`)
may compute the same model differently (INT8 kernels that saturate without VNNI, bf16 where the
builder had none). So the manifest records the instruction-set class it was verified on and a small
check: `INPUTS` image-like inputs regenerated from a seed (smooth random pictures normalized with the
card's mean/std: numpy's PCG64 gives the same numbers on every platform), the reference logits of the
classes that matter for each (the top 5), and a tolerance. The reference is what a correct machine
computes: the Q/DQ arithmetic for INT8 (the same on every CPU), the FP32 source for other precisions.
The tolerance is a few times what the build machine's own kernels differed from the reference, and
never below a floor per precision.

`artifacts.open_engine` runs the check when the artifact is opened on a CPU of another class than the
one recorded (milliseconds: eight images at batch size 1 to 8), and refuses a failed one with the
command that rebuilds it for this CPU; `inspect --verify` runs it on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.errors import CheckFailed
from resnet_deploy.samples import batches_of

INPUTS = 8
SEED = 20161210  # the paper's arXiv date; any fixed seed would do
TOP_K = 5
COARSE = 4  # random pixels per side before upsampling: smooth, image-like inputs, not per-pixel noise
# Smallest tolerance, as a fraction of the largest |reference logit|: the rounding a correct machine may add.
RELATIVE_FLOOR = {"int8": 0.05, "fp16": 0.05, "bf16": 0.1, "fp32": 0.001}
KERNEL_FACTOR = 3.0  # × the build machine's own largest difference from the reference


def check_inputs(size: int, mean: tuple[float, ...], std: tuple[float, ...], *, count: int = INPUTS,
                 seed: int = SEED) -> np.ndarray:
    """`count` smooth random RGB pictures (size × size), normalized as the card says: float32 NCHW."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(count, 3, COARSE, COARSE)).astype(np.float64)
    # Bilinear upsampling written out with numpy alone, so every platform computes the same pixels.
    position = np.linspace(0, COARSE - 1, size)
    low = np.clip(np.floor(position).astype(int), 0, COARSE - 2)
    frac = position - low
    rows = coarse[:, :, low, :] * (1 - frac)[None, None, :, None] + coarse[:, :, low + 1, :] * frac[None, None, :, None]
    pixels = rows[:, :, :, low] * (1 - frac) + rows[:, :, :, low + 1] * frac
    pixels = np.round(pixels) / 255.0
    m = np.asarray(mean, dtype=np.float64).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float64).reshape(1, 3, 1, 1)
    return ((pixels - m) / s).astype(np.float32)


def record(reference: np.ndarray, artifact: np.ndarray, *, precision: str, reference_name: str,
           size: int, cpu: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `self_check`: the reference's top-5 classes and logits for each input, and the tolerance
    (from the build machine's own `artifact` logits on the same inputs)."""
    k = min(TOP_K, reference.shape[1])
    top = np.argsort(-reference, axis=1)[:, :k]
    values = np.take_along_axis(reference, top, axis=1)
    build_diff = float(np.max(np.abs(np.take_along_axis(artifact, top, axis=1) - values)))
    scale = float(np.max(np.abs(reference)))
    tolerance = max(KERNEL_FACTOR * build_diff, RELATIVE_FLOOR.get(precision, 0.05) * scale, 1e-3)
    return {
        "inputs": {"kind": "smooth random pictures", "count": int(reference.shape[0]), "seed": SEED,
                   "size": size, "generator": f"numpy PCG64, {COARSE}x{COARSE} uint8 per channel, bilinear, "
                                              "normalized with the card's mean/std"},
        "reference": reference_name,
        "top_classes": top.tolist(),
        "top_logits": [[round(float(v), 5) for v in row] for row in values],
        "build_max_abs_diff": round(build_diff, 6),
        "tolerance": round(tolerance, 6),
        "verified_on": cpu,
    }


@dataclass
class SelfCheckResult:
    passed: bool
    max_abs_diff: float
    tolerance: float
    top1_flips: int  # inputs whose top-1 moved although the reference's margin exceeds twice the tolerance
    inputs: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                "top1_flips": self.top1_flips, "inputs": self.inputs, "reason": self.reason}


def run_check(infer: Any, check: dict[str, Any], mean: tuple[float, ...], std: tuple[float, ...],
              static_batch: int | None = None) -> SelfCheckResult:
    """Run `infer` (a batch → logits function) on the recorded inputs and hold it to the record."""
    try:
        spec = check["inputs"]
        top = np.asarray(check["top_classes"], dtype=np.int64)
        values = np.asarray(check["top_logits"], dtype=np.float64)
        tolerance = float(check["tolerance"])
        images = check_inputs(int(spec["size"]), mean, std, count=int(spec["count"]), seed=int(spec["seed"]))
    except (KeyError, TypeError, ValueError) as exc:
        return SelfCheckResult(False, float("nan"), float("nan"), 0, 0, f"the recorded self-check is malformed ({exc})")
    if top.shape != values.shape or top.ndim != 2 or len(top) != len(images):
        return SelfCheckResult(False, float("nan"), tolerance, 0, len(images), "the recorded self-check is malformed "
                               "(its classes and logits do not match its inputs)")
    chunks = batches_of(images, static_batch or len(images), static=bool(static_batch))
    logits = np.concatenate([np.asarray(infer(chunk), dtype=np.float64) for chunk in chunks])[: len(images)]
    if top.max(initial=0) >= logits.shape[1]:
        return SelfCheckResult(False, float("nan"), tolerance, 0, len(images),
                               f"the recorded classes go beyond the model's {logits.shape[1]} outputs")
    if not np.all(np.isfinite(logits)):
        return SelfCheckResult(False, float("inf"), tolerance, 0, len(images), "the model produced inf/NaN")
    got = np.take_along_axis(logits, top, axis=1)
    diff = float(np.max(np.abs(got - values)))
    margin = values[:, 0] - values[:, 1] if values.shape[1] > 1 else np.full(len(values), np.inf)
    flips = int(np.sum((logits.argmax(1) != top[:, 0]) & (margin > 2 * tolerance)))
    passed = diff <= tolerance and flips == 0
    reason = None if passed else (f"max |Δ logit| {diff:.3g} against the recorded reference (tolerance "
                                  f"{tolerance:.3g}), {flips} of {len(images)} clear top-1 predictions changed")
    return SelfCheckResult(passed, diff, tolerance, flips, len(images), reason)


def refuse(artifact: str, result: SelfCheckResult, built_class: str, here_class: str, rebuild: str) -> CheckFailed:
    """The one error line of a failed self-check: the two classes, what differed, and the command that rebuilds."""
    return CheckFailed(f"{artifact}: verified on a {built_class} CPU, and its self-check fails on this {here_class} "
                       f"CPU: {result.reason}. Rebuild it for this CPU: {rebuild}")


_VERIFIED: dict[tuple[str, str], SelfCheckResult] = {}  # (artifact path, sha256) → result, once per process


def verify_artifact(path: Path, manifest: dict[str, Any] | None, engine: Any) -> SelfCheckResult | None:
    """Run the manifest's self-check with `engine` on this CPU (None: the artifact carries none)."""
    if not manifest or not isinstance(manifest.get("self_check"), dict) or not isinstance(manifest.get("card"), dict):
        return None
    key = (str(Path(path).resolve()), str(manifest.get("sha256")))
    if key not in _VERIFIED:
        pre = manifest["card"].get("preprocessing") or {}
        shape = engine.input.shape
        static = shape[0] if shape and isinstance(shape[0], int) else None
        _VERIFIED[key] = run_check(engine.infer, manifest["self_check"], tuple(pre.get("mean", (0, 0, 0))),
                                   tuple(pre.get("std", (1, 1, 1))), static_batch=static)
    return _VERIFIED[key]


def verify_if_needed(path: Path, manifest: dict[str, Any] | None, engine: Any, *, force: bool = False
                     ) -> SelfCheckResult | None:
    """The check `open_engine` runs: only where this CPU's class differs from the one the artifact was verified on
    (always with `force`); a failure is refused with the command that rebuilds the artifact for this CPU."""
    from resnet_deploy.precision.isa import this_cpu

    if not manifest or not isinstance(manifest.get("self_check"), dict):
        return None
    isa = manifest.get("isa") if isinstance(manifest.get("isa"), dict) else {}
    built = str(isa.get("class") or (manifest["self_check"].get("verified_on") or {}).get("class") or "unknown")
    here = this_cpu().cpu_class
    if built == here and not force:
        return None
    result = verify_artifact(path, manifest, engine)
    if result is not None and not result.passed:
        rebuild = str(isa.get("rebuild") or "resnet-deploy build-engine --onnx MODEL.onnx ...")
        raise refuse(str(path), result, built, here, f"{rebuild} --cpu {here} (or --cpu portable)")
    return result
