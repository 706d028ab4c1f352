"""The whole pipeline in one command: data → train → export → FP16/INT8 → engines → validate → bench.

Each step runs the project's own CLI (`python -m resnet_deploy <command> ... --json`) in a child
process, so the commands the report lists for reproduction are exactly the ones that ran, and
every step's result is the JSON document that command prints. The steps' progress bars and
warnings go straight to the terminal (stderr).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from resnet_deploy.errors import CheckFailed, UsageError


@dataclass(frozen=True)
class DemoOptions:
    out: Path
    data: Path | None = None  # None: the embedded digits
    arch: str = "resnet20"
    train_iters: int = 300
    batch_size: int = 64
    bench_batch_sizes: str = "1,32"
    bench_duration: float = 2.0
    calib_samples: int = 256
    targets: tuple[str, ...] = ("onnxruntime", "openvino", "tensorrt")


@dataclass
class StepResult:
    name: str
    title: str
    argv: list[str]
    returncode: int
    seconds: float
    output: dict[str, Any] | None
    skipped_reason: str | None = None

    @property
    def command(self) -> str:
        return "resnet-deploy " + shlex.join(self.argv)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class DemoResult:
    options: DemoOptions
    data_description: dict[str, Any]
    steps: list[StepResult] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    report: Path | None = None

    def step(self, name: str) -> StepResult | None:
        return next((s for s in self.steps if s.name == name), None)

    @property
    def passed(self) -> bool:
        validate = self.step("validate")
        return all(s.ok or s.skipped_reason for s in self.steps) and bool(validate and validate.ok)


Announce = Callable[[str], None]


def _run_cli(name: str, title: str, argv: list[str], announce: Announce) -> StepResult:
    """Run one `resnet-deploy` command with `--json`; its stderr (progress, warnings) passes through."""
    announce(f"[bold]{escape(title)}[/bold]\n  $ resnet-deploy {escape(shlex.join(argv))}")
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "resnet_deploy", *argv, "--json"], stdout=subprocess.PIPE, text=True, check=False
    )
    seconds = time.perf_counter() - started
    output = None
    if completed.stdout.strip():
        try:
            output = json.loads(completed.stdout)
        except json.JSONDecodeError:
            output = None
    return StepResult(name, title, argv, completed.returncode, seconds, output)


def _require(step: StepResult) -> dict[str, Any]:
    if not step.ok or step.output is None:
        raise CheckFailed(f"demo step '{step.title}' failed (exit {step.returncode}): {step.command}")
    return step.output


def prepare_data(options: DemoOptions) -> tuple[Path, dict[str, Any]]:
    """The user's folder as given, or the embedded digits written as an ImageFolder tree."""
    if options.data is not None:
        from resnet_deploy.data import open_dataset

        train = open_dataset(options.data, split="train")
        test = open_dataset(options.data)
        if test.split == "train":
            raise UsageError(f"{options.data}: the demo needs a test/ or val/ split beside train/")
        return options.data, {
            "source": str(options.data), "classes": train.num_classes, "class_names": train.class_names,
            "train_images": len(train), "test_images": len(test), "test_split": test.split, "embedded": False,
        }
    from resnet_deploy.demo.data import DIGIT_CLASSES, write_digits_imagefolder

    folder = write_digits_imagefolder(options.out / "data")
    return folder.root, {
        "source": "scikit-learn handwritten digits (UCI ML), 8x8 grey scans upscaled to 32x32 RGB",
        "classes": 10, "class_names": DIGIT_CLASSES, "train_images": folder.train_images,
        "test_images": folder.test_images, "test_split": "test", "embedded": True,
    }


def target_usable(target: str) -> tuple[bool, str]:
    if target == "onnxruntime":
        return True, ""
    if target == "openvino":
        from resnet_deploy.targets.openvino import openvino_usable

        return openvino_usable()
    from resnet_deploy.targets.tensorrt import tensorrt_usable

    return tensorrt_usable()


def run_demo(options: DemoOptions, announce: Announce) -> DemoResult:
    started = time.perf_counter()
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    data_dir, data_description = prepare_data(options)
    result = DemoResult(options, data_description)
    train_dir = data_dir / "train"
    artifacts_dir = out / "artifacts"
    run_dir = out / "train"
    stem = artifacts_dir / options.arch

    train = _run_cli("train", "Train", [
        "train", "--arch", options.arch, "--data", str(data_dir), "--iters", str(options.train_iters),
        "--batch-size", str(options.batch_size), "--out", str(run_dir), "--cache-dir", str(out / "cache"),
        "--eval-every", str(max(1, options.train_iters // 10)),
    ], announce)
    result.steps.append(train)
    _require(train)
    card = run_dir / "best.safetensors"

    export = _run_cli("export", "Export to ONNX (verified against PyTorch)", [
        "export", "--checkpoint", str(card), "--data", str(data_dir), "--output", f"{stem}.onnx",
    ], announce)
    result.steps.append(export)
    _require(export)
    fp32 = Path(f"{stem}.onnx")
    result.artifacts += [card, fp32]

    precision_steps = [
        ("fp16", "FP16 model (ONNX Runtime)", ["--fp16"], f"{stem}.fp16.onnx"),
        ("int8", "Calibrated INT8 model (ONNX Runtime)", ["--int8"], f"{stem}.int8.onnx"),
    ]
    for name, title, flags, output in precision_steps:
        step = _run_cli(name, title, [
            "build-engine", "--onnx", str(fp32), *flags, "--calib-data", str(train_dir),
            "--calib-samples", str(options.calib_samples), "--target", "onnxruntime", "--output", output,
        ], announce)
        result.steps.append(step)
        _require(step)
        result.artifacts.append(Path(output))

    for target in options.targets:
        if target == "onnxruntime":
            continue
        usable, reason = target_usable(target)
        suffix = ".xml" if target == "openvino" else ".plan"
        for name, flags, output in ((f"{target}-fp32", [], f"{stem}.{target}{suffix}"),
                                    (f"{target}-int8", ["--int8"], f"{stem}.{target}.int8{suffix}")):
            argv = ["build-engine", "--onnx", str(fp32), *flags, "--calib-data", str(train_dir),
                    "--calib-samples", str(options.calib_samples), "--target", target, "--output", output]
            title = f"{target} engine ({'int8' if flags else 'fp32'})"
            if not usable:
                result.steps.append(StepResult(name, title, argv, 0, 0.0, None, skipped_reason=reason))
                announce(f"[yellow]skipped[/yellow] {escape(title)}: {escape(reason)}")
                continue
            step = _run_cli(name, title, argv, announce)
            result.steps.append(step)
            _require(step)
            result.artifacts.append(Path(output))

    validate = _run_cli("validate", "Validate every artifact on the test images", [
        "validate", *map(str, result.artifacts), "--data", str(data_dir), "--split", data_description["test_split"],
        "--report", str(out / "validate.md"),
    ], announce)
    result.steps.append(validate)
    if validate.output is None:  # exit 1 with a table is a verdict; no JSON at all is a failure
        _require(validate)

    bench = _run_cli("bench", "Benchmark latency and throughput", [
        "bench", *map(str, result.artifacts), "--batch-sizes", options.bench_batch_sizes,
        "--duration", str(options.bench_duration), "--report", str(out / "bench.md"),
        "--plot", str(out / "bench.png"),
    ], announce)
    result.steps.append(bench)
    _require(bench)
    result.seconds = time.perf_counter() - started
    return result
