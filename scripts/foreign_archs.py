"""Three torchvision classifiers that are not ResNets, through build-engine, validate and bench (issue 14).

    PYTHONPATH=. python scripts/foreign_archs.py --out docs/bench/foreign_archs [--archs mobilenet_v3_small,...]

Each model (10 classes, 64x64 input) is exported by torch's own exporter (`torch.onnx.export(dynamo=True)`)
with its own I/O names and no model card, then given to the pipeline the way a user would: the
card-less ONNX and the preprocessing flags. FP16 and calibrated INT8 are built for ONNX Runtime and
INT8 for OpenVINO; validate compares them with the FP32 ONNX on real images (scikit-learn's digits);
bench times them on ONNX Runtime and OpenVINO. The INT8 model's Q/DQ graph is read to say which op
types stayed in float (no DequantizeLinear feeds them).

Weights: random (latency does not depend on them), except that BatchNorm statistics come from the
digits and the last Linear layer is fitted by ridge regression on every image, so the logits have
a trained model's margins on the images validate sees; parity, not accuracy, is what is measured.
Writes `<out>.json` and `<out>.md` (the table of docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image

SIZE = 64
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
ARCHS = ("mobilenet_v3_small", "efficientnet_b0", "vit_tiny")
# Builds that would kill the process. (ONNX Runtime 1.31.1 segfaulted on the FP16 ViT while its LayerNorm ran in
# FP16; precision/fp16.py keeps LayerNorm in FP32 since, and the ViT's FP16 build is measured.)
KNOWN_CRASHES: dict[tuple[str, str], str] = {}
IO_NAMES = {"mobilenet_v3_small": ("pixel_values", "logits_out"), "efficientnet_b0": ("x", "y"),
            "vit_tiny": ("image", "scores")}


def make_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "vit_tiny":  # vit_b_16 at 224 is too slow for two shared cores; the same blocks, smaller
        return torchvision.models.VisionTransformer(image_size=SIZE, patch_size=8, num_layers=4, num_heads=4,
                                                    hidden_dim=128, mlp_dim=256, num_classes=10)
    return getattr(torchvision.models, arch)(num_classes=10)


def write_digits(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """root/{train,test}/digit_<k>/*.png: scikit-learn's real handwritten digits, 64x64 RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0 * 255).astype(np.uint8)
    for label in range(10):
        for rank, index in enumerate(np.flatnonzero(digits.target == label)[:train_per_class + test_per_class]):
            folder = root / ("train" if rank < train_per_class else "test") / f"digit_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[index], mode="L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            image.convert("RGB").save(folder / f"{index:04d}.png")
    return root


def _tensors(root: Path) -> torch.Tensor:
    files = sorted(root.glob("*/*/*.png"))
    x = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0 for f in files])
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    labels = [int(f.parent.name.split("_")[1]) for f in files]
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def fit(model: torch.nn.Module, data: Path) -> torch.nn.Module:
    """BatchNorm statistics of the digits, and the last Linear layer fitted by ridge regression."""
    x, y = _tensors(data)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    f = torch.cat([seen[0].double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    target = torch.nn.functional.one_hot(y, 10).double() * 10 - 1
    ridge = 1e-3 * f.pow(2).sum() / len(f) * torch.eye(f.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(f.T @ f + ridge, f.T @ target)
    head.weight.data, head.bias.data = weights[:-1].T.float(), weights[-1].float()
    return model


def export(model: torch.nn.Module, arch: str, path: Path) -> Path:
    """The new (dynamo) exporter, dynamic batch, the model's own I/O names, no card."""
    input_name, output_name = IO_NAMES[arch]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.zeros(2, 3, SIZE, SIZE),), dynamo=True,
                                    input_names=[input_name], output_names=[output_name],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False,
                                    verbose=False)
        program.save(str(path))
    return path


def float_op_types(qdq_onnx: Path) -> dict[str, int]:
    """Op types (with counts) of the compute nodes that stay in float in a Q/DQ model: their output feeds no
    QuantizeLinear. (In the QDQ format every consumer of a quantized tensor reads it through a
    DequantizeLinear, so what is quantized shows at a node's output, not at its inputs.)"""
    import onnx

    graph = onnx.load(str(qdq_onnx)).graph
    quantized = {node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    plumbing = {"QuantizeLinear", "DequantizeLinear", "Constant", "Shape", "Gather", "Unsqueeze", "Concat",
                "Reshape", "Squeeze", "Cast", "Identity", "Flatten", "Transpose", "Slice", "Expand"}
    counts: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type not in plumbing and not quantized.intersection(node.output):
            counts[node.op_type] += 1
    return dict(sorted(counts.items()))


def run_arch(arch: str, work: Path, data: Path, *, calib_samples: int, batch_sizes: list[int],
             duration: float) -> dict[str, Any]:
    from resnet_deploy.bench.plan import plan_for_artifacts, run_plan
    from resnet_deploy.bench.timing import TimingConfig
    from resnet_deploy.builder import BuildRequest, build
    from resnet_deploy.errors import CheckFailed, UsageError
    from resnet_deploy.foreign.card import CardFlags
    from resnet_deploy.validate.run import ValidateOptions, validate

    flags = CardFlags(mean=MEAN, std=STD)
    raw = export(fit(make_model(arch), data), arch, work / f"{arch}.onnx")
    params = sum(p.numel() for p in make_model(arch).parameters())
    builds: dict[str, Any] = {}
    not_built: dict[str, str] = {}
    for key, precision, target, suffix in (("ort-fp16", "fp16", "onnxruntime", ".fp16.cpu.onnx"),
                                           ("ort-int8", "int8", "onnxruntime", ".int8.cpu.onnx"),
                                           ("ov-int8", "int8", "openvino", ".int8.xml")):
        if (arch, precision) in KNOWN_CRASHES:
            not_built[key] = KNOWN_CRASHES[(arch, precision)]
            continue
        request = BuildRequest(onnx=raw, precision=precision, target=target,
                               calib_data=data / "train", calib_samples=calib_samples, card_flags=flags,
                               output=work / f"{arch}{suffix}", min_agreement=0.0)
        try:
            report = build(request)
        except (CheckFailed, UsageError) as exc:  # a check that refused the artifact is a result too
            not_built[key] = f"refused by build-engine: {str(exc).split(': ', 1)[-1]}"
            continue
        builds[key] = {"output": report.output, "clean": report.clean.changes if report.clean else [],
                       "precision_onnx": report.precision_onnx,
                       "check": {"agreement": report.precision_result.agreement,
                                 "max_abs_logit_diff": report.precision_result.max_abs_logit_diff}}
    artifacts = [raw, *(b["output"] for b in builds.values())]
    checked = validate(artifacts, data / "test", options=ValidateOptions(workers=0, card_flags=flags))
    parity = [{"artifact": Path(r.artifact).name, "backend": r.backend, "precision": r.precision,
               "images": r.images, "top1": r.top1, "agreement": r.agreement,
               "max_abs_logit_diff": r.max_abs_logit_diff, "passed": r.passed} for r in checked.results]
    plan = plan_for_artifacts(artifacts, backends=["onnxruntime", "openvino"], precisions=None, device="cpu",
                              threads=None, include_copies=True)
    timed = run_plan(plan, batch_sizes=batch_sizes, timing=TimingConfig(warmup=3, duration_s=duration),
                     include_copies=True, environment={})
    latency = [{"artifact": Path(r.artifact or "").name, "backend": r.backend, "precision": r.precision,
                "batch_size": r.batch_size, "mean_ms": r.latency_ms.mean, "p50_ms": r.latency_ms.p50,
                "cv": r.cv, "throughput_ips": r.throughput_ips} for r in timed.results]
    qdq = builds["ov-int8"]["precision_onnx"]  # OpenVINO keeps the Q/DQ ONNX beside its IR
    return {"arch": arch, "params": params, "io": IO_NAMES[arch], "cleaned": builds["ov-int8"]["clean"],
            "not_built": not_built,
            "build_checks": {k: b["check"] for k, b in builds.items()}, "parity": parity, "latency": latency,
            "int8_float_ops": float_op_types(qdq), "skipped": [s.to_dict() for s in timed.skipped]}


def markdown(results: list[dict[str, Any]], machine: str, date: str) -> str:
    lines = [f"Measured {date} on {machine}.", "",
             "| model | params | artifact | backend | prec. | top-1 % | agree % | max Δlogit | gate | "
             "batch 1 ms | batch 8 ms |", "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for res in results:
        times = {(t["artifact"], t["backend"], t["batch_size"]): t["mean_ms"] for t in res["latency"]}
        for row in res["parity"]:
            rows = [(row["backend"], row["precision"])]
            if row["backend"] == "onnxruntime" and row["precision"] == "fp32":
                rows.append(("openvino", "fp32"))  # OpenVINO reads the FP32 ONNX directly
            for backend, precision in rows:
                ms = [times.get((row["artifact"], backend, b)) for b in (1, 8)]
                parity = (f"{row['top1']:.1f} | {row['agreement']:.1f} | {row['max_abs_logit_diff']:.3g} | "
                          f"{'pass' if row['passed'] else 'FAIL'}") if backend == row["backend"] else "— | — | — | —"
                lines.append(f"| {res['arch']} | {res['params'] / 1e6:.2f} M | {row['artifact']} | {backend} | "
                             f"{precision} | {parity} | " + " | ".join("—" if m is None else f"{m:.2f}" for m in ms)
                             + " |")
    lines += ["", "Op types computed in float in the INT8 (Q/DQ) model (their output feeds no QuantizeLinear), "
              "and artifacts not built:", ""]
    for res in results:
        ops = ", ".join(f"{op} ×{n}" for op, n in res["int8_float_ops"].items()) or "none"
        lines.append(f"- {res['arch']}: {ops}")
    for res in results:
        for key, why in res["not_built"].items():
            lines.append(f"- {res['arch']} {key}: {why}")
    lines += ["", "Cleaning the exported graphs (build-engine on the card-less ONNX):", ""]
    for res in results:
        lines.append(f"- {res['arch']} (`{res['io'][0]}` → `{res['io'][1]}`): " + "; ".join(res["cleaned"]))
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    import os

    return f"{name}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/bench/foreign_archs"))
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--train-per-class", type=int, default=20)
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--calib-samples", type=int, default=100)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args(argv)
    machine, date = cpu_model(), time.strftime("%Y-%m-%d")
    results = []
    with tempfile.TemporaryDirectory(prefix="foreign-archs-") as tmp:
        data = write_digits(Path(tmp) / "digits", args.train_per_class, args.test_per_class)
        for arch in args.archs.split(","):
            print(f"{arch} ...", file=sys.stderr, flush=True)
            results.append(run_arch(arch, Path(tmp), data, calib_samples=args.calib_samples,
                                    batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                                    duration=args.duration))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": machine, "date": date, "torch": torch.__version__, "results": results}
    args.out.with_suffix(".json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    table = markdown(results, machine, date)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
