"""The whole pipeline in one command: data → train → export → FP16/INT8 → engines → validate → bench.

Each step calls the library (the trainer, `export_onnx`, `build`, `validate`, the bench plan) in this
process; each step also records the `resnet-deploy` command line that does the same thing by hand,
which the report lists for reproduction, and the JSON document that command prints with `--json`.
Progress and warnings go to the callbacks the command supplies (the library prints nothing).
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from resnet_deploy import registry
from resnet_deploy.demo.outputs import claim_out_folder
from resnet_deploy.errors import CheckFailed, ResnetDeployError, UsageError


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
    qat_iters: int = 60  # quantization-aware fine-tuning beside post-training INT8; 0 leaves it out
    targets: tuple[str, ...] = registry.target_names()  # every declared target (registry/backends.py)
    force: bool = False  # start over in an --output folder that holds an earlier run (see demo/outputs.py)


EXPORT_CHECK_IMAGES = 16  # real test images the export is verified on (as `export --data`)


@dataclass
class StepResult:
    name: str
    title: str
    argv: list[str]  # the `resnet-deploy` command line that does this step by hand
    returncode: int  # what that command would exit with: 0, 1 (a failed check) or 2 (bad input)
    seconds: float
    output: dict[str, Any] | None  # the JSON document that command prints with --json
    skipped_reason: str | None = None
    error: str | None = None

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


@dataclass
class DemoHooks:
    """Where the demo reports: step titles (rich markup), the build's listener, the trainer's reporter."""

    announce: Announce = lambda text: None
    build: Any = None  # resnet_deploy.builder.BuildListener
    train_reporter: Any = None  # trainer.progress.Reporter


def _run_step(name: str, title: str, argv: list[str], hooks: DemoHooks,
              call: Callable[[], tuple[dict[str, Any], int]]) -> StepResult:
    """Run one step in this process; a known failure becomes the exit code its command would have."""
    hooks.announce(f"[bold]{escape(title)}[/bold]\n  $ resnet-deploy {escape(shlex.join(argv))}")
    started = time.perf_counter()
    try:
        output, code = call()
    except ResnetDeployError as exc:
        return StepResult(name, title, argv, exc.exit_code, time.perf_counter() - started, None, error=str(exc))
    return StepResult(name, title, argv, code, time.perf_counter() - started, output)


def _require(step: StepResult) -> dict[str, Any]:
    if not step.ok or step.output is None:
        why = f": {step.error}" if step.error else ""
        raise CheckFailed(f"demo step '{step.title}' failed (exit {step.returncode}){why}; by hand: {step.command}")
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
            "name": options.data.resolve().name,
        }
    from resnet_deploy.demo.data import DIGIT_CLASSES, write_digits_imagefolder

    folder = write_digits_imagefolder(options.out / "data")
    return folder.root, {
        "source": "scikit-learn handwritten digits (UCI ML), 8x8 grey scans upscaled to 32x32 RGB",
        "classes": 10, "class_names": DIGIT_CLASSES, "train_images": folder.train_images,
        "test_images": folder.test_images, "test_split": "test", "embedded": True, "name": "scikit-learn digits",
    }


def run_demo(options: DemoOptions, hooks: DemoHooks) -> DemoResult:
    from resnet_deploy.environment import capture_environment

    started = time.perf_counter()
    claim_out_folder(options.out, force=options.force, keep=options.data)
    options.out.mkdir(parents=True, exist_ok=True)
    # Read the machine before any runtime starts (see commands/validate_cmd.py).
    environment = capture_environment()
    data_dir, data_description = prepare_data(options)
    result = DemoResult(options, data_description)
    stem = options.out / "artifacts" / options.arch

    card = _train(options, data_dir, hooks, result)
    fp32 = _export(card, data_dir, Path(f"{stem}.onnx"), hooks, result)
    result.artifacts += [card, fp32]
    _build_steps(options, data_dir / "train", card, fp32, stem, hooks, result)
    if options.qat_iters:
        _finetune_steps(options, data_dir, card, stem, hooks, result)
    _validate(options, data_dir, data_description["test_split"], environment, hooks, result)
    _bench(options, hooks, result)
    result.seconds = time.perf_counter() - started
    return result


# --- the steps ---------------------------------------------------------------------------------------------------


def _train(options: DemoOptions, data_dir: Path, hooks: DemoHooks, result: DemoResult) -> Path:
    run_dir, cache = options.out / "train", options.out / "cache"
    eval_every = max(1, options.train_iters // 10)
    argv = ["train", "--arch", options.arch, "--data", str(data_dir), "--iters", str(options.train_iters),
            "--batch-size", str(options.batch_size), "--output", str(run_dir), "--cache-dir", str(cache),
            "--eval-every", str(eval_every)]

    def call() -> tuple[dict[str, Any], int]:
        from trainer import TrainConfig, train  # the demo is CLI-level orchestration: it may drive the trainer

        config = TrainConfig(arch=options.arch, data=data_dir, iters=options.train_iters,
                             batch_size=options.batch_size, out=run_dir, cache_dir=cache, eval_every=eval_every)
        return train(config, hooks.train_reporter).to_dict(), 0

    step = _run_step("train", "Train", argv, hooks, call)
    result.steps.append(step)
    _require(step)
    _retitle_curves(run_dir, curves_title(options, result.data_description))
    return run_dir / "best.safetensors"


def curves_title(options: DemoOptions, data_description: dict[str, Any]) -> str:
    """The training plot's title: the data set by name (the trainer only knows its folder, here `data`)."""
    name = data_description.get("name") or "the data set"
    return f"{options.arch} on {name} ({data_description.get('train_images', '?')} training images)"


def _retitle_curves(run_dir: Path, title: str) -> None:
    from trainer.plots import plot_curves

    # Where it cannot be drawn, the trainer's own plot stays (or its warning was given).
    with contextlib.suppress(ImportError, RuntimeError, ValueError, ResnetDeployError):
        plot_curves([run_dir], run_dir / "curves.png", title=title)


def _export(card: Path, data_dir: Path, output: Path, hooks: DemoHooks, result: DemoResult) -> Path:
    argv = ["export", "--checkpoint", str(card), "--data", str(data_dir), "--output", str(output)]

    def call() -> tuple[dict[str, Any], int]:
        from resnet_deploy.checkpoints import load_model
        from resnet_deploy.export import export_onnx
        from resnet_deploy.samples import folder_images

        loaded = load_model(card)
        test = data_dir / result.data_description["test_split"]
        images = folder_images(test, loaded.card.preprocessing, EXPORT_CHECK_IMAGES, 0)[0]
        return export_onnx(loaded, output, real_images=images).to_dict(), 0

    step = _run_step("export", "Export to ONNX (verified against PyTorch)", argv, hooks, call)
    result.steps.append(step)
    _require(step)
    return output


def _build_step(name: str, title: str, argv: list[str], request: Any, hooks: DemoHooks,
                result: DemoResult) -> None:
    from resnet_deploy.builder import build

    step = _run_step(name, title, argv, hooks, lambda: (build(request, hooks.build).to_dict(), 0))
    result.steps.append(step)
    _require(step)
    result.artifacts.append(Path(request.output))


def _build_steps(options: DemoOptions, train_dir: Path, card: Path, fp32: Path, stem: Path, hooks: DemoHooks,
                 result: DemoResult) -> None:
    from resnet_deploy import registry
    from resnet_deploy.builder import BuildRequest
    from resnet_deploy.targets.base import target_usable

    common = ["--calib-data", str(train_dir), "--calib-samples", str(options.calib_samples)]
    for name, title, flag, output in (("fp16", "FP16 model (ONNX Runtime)", "--fp16", f"{stem}.fp16.onnx"),
                                      ("int8", "Calibrated INT8 model (ONNX Runtime)", "--int8",
                                       f"{stem}.int8.cpu.onnx")):
        argv = ["build-engine", "--onnx", str(fp32), flag, *common, "--target", "onnxruntime", "--output", output]
        request = BuildRequest(onnx=fp32, precision=name, calib_data=train_dir,
                               calib_samples=options.calib_samples, target="onnxruntime", output=Path(output))
        _build_step(name, title, argv, request, hooks, result)

    for target in options.targets:
        if target == "onnxruntime":
            continue
        usable, reason = target_usable(target)
        spec = registry.backend(target)
        from_card = spec.source == "card"  # it compiles the PyTorch model (AOTInductor), not the ONNX
        source = ["--checkpoint", str(card)] if from_card else ["--onnx", str(fp32)]
        for precision, flags in (("fp32", []), ("int8", ["--int8"])):
            if precision not in spec.precisions:  # its declaration says it never computes this one
                continue
            output = f"{stem}.{target}{'.int8' if flags else ''}{spec.default_suffix()}"
            argv = ["build-engine", *source, *flags, *common, "--target", target, "--output", output]
            title = f"{target} engine ({precision})"
            if not usable:
                result.steps.append(StepResult(f"{target}-{precision}", title, argv, 0, 0.0, None,
                                               skipped_reason=reason))
                hooks.announce(f"[yellow]skipped[/yellow] {escape(title)}: {escape(reason)}")
                continue
            request = BuildRequest(onnx=None if from_card else fp32, checkpoint=card if from_card else None,
                                   precision=precision, calib_data=train_dir, calib_samples=options.calib_samples,
                                   target=target, output=Path(output))
            _build_step(f"{target}-{precision}", title, argv, request, hooks, result)


def _finetune_steps(options: DemoOptions, data_dir: Path, card: Path, stem: Path, hooks: DemoHooks,
                    result: DemoResult) -> None:
    """INT8 by quantization-aware fine-tuning (the card as teacher), built for every target that compiles an ONNX
    in INT8, so validate and bench put it beside the post-training INT8 of the same target."""
    from resnet_deploy import registry
    from resnet_deploy.builder import BuildRequest
    from resnet_deploy.targets.base import target_usable

    qat = Path(f"{stem}.qat.onnx")
    argv = ["finetune-int8", str(card), "--data", str(data_dir), "--output", str(qat), "--iters",
            str(options.qat_iters), "--batch-size", str(options.batch_size), "--calib-samples",
            str(options.calib_samples)]

    def call() -> tuple[dict[str, Any], int]:
        from trainer.qat import FinetuneConfig, finetune_int8

        config = FinetuneConfig(card=card, data=data_dir, output=qat, iters=options.qat_iters,
                                batch_size=options.batch_size, calib_samples=options.calib_samples)
        return finetune_int8(config, hooks.train_reporter).to_dict(), 0

    step = _run_step("finetune-int8", "Quantization-aware fine-tuned INT8 (the FP32 card as teacher)", argv, hooks,
                     call)
    result.steps.append(step)
    _require(step)
    for target in options.targets:
        spec = registry.backend(target)
        if spec.source == "card" or "int8" not in spec.precisions:
            continue
        usable, reason = target_usable(target)
        output = f"{stem}.qat.int8.cpu.onnx" if target == "onnxruntime" else \
            f"{stem}.qat.{target}.int8{spec.default_suffix()}"
        argv = ["build-engine", "--onnx", str(qat), "--int8", "--target", target, "--output", output]
        title = f"Fine-tuned INT8 ({target})"
        if not usable:
            result.steps.append(StepResult(f"qat-{target}", title, argv, 0, 0.0, None, skipped_reason=reason))
            hooks.announce(f"[yellow]skipped[/yellow] {escape(title)}: {escape(reason)}")
            continue
        request = BuildRequest(onnx=qat, precision="int8", target=target, output=Path(output))
        _build_step(f"qat-{target}", title, argv, request, hooks, result)


def _validate(options: DemoOptions, data_dir: Path, split: str, environment: dict[str, Any], hooks: DemoHooks,
              result: DemoResult) -> None:
    from resnet_deploy.validate.report import write_report
    from resnet_deploy.validate.run import ValidateOptions, validate

    report = options.out / "validate.md"
    argv = ["validate", *map(str, result.artifacts), "--data", str(data_dir), "--split", split,
            "--report", str(report)]

    def call() -> tuple[dict[str, Any], int]:
        # Decoding in this process: no worker processes forked after the runtimes have loaded.
        outcome = validate(result.artifacts, data_dir, options=ValidateOptions(split=split, workers=0))
        write_report(report, outcome, environment_now(environment))
        return outcome.to_dict(), 0 if outcome.passed else 1

    step = _run_step("validate", "Validate every artifact on the test images", argv, hooks, call)
    result.steps.append(step)
    if step.output is None:  # exit 1 with a table is a verdict; no result at all is a failure
        _require(step)


def environment_now(environment: dict[str, Any]) -> dict[str, Any]:
    """`environment` (read at the demo's start, before any runtime loaded: see commands/validate_cmd.py) with
    the parts that change brought up to now: the date, the CPU's load and the thread settings. The GPU and the
    versions stay as read (querying CUDA after the runtimes loaded is what crashed)."""
    import datetime as _dt

    from resnet_deploy.environment import cpu_info, thread_settings

    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {**environment, "date": now, "cpu": cpu_info(), "threads": thread_settings()}


def _bench(options: DemoOptions, hooks: DemoHooks, result: DemoResult) -> None:
    report, plot = options.out / "bench.md", options.out / "bench.png"
    argv = ["bench", *map(str, result.artifacts), "--batch-sizes", options.bench_batch_sizes,
            "--duration", str(options.bench_duration), "--report", str(report), "--plot", str(plot)]

    def call() -> tuple[dict[str, Any], int]:
        import torch

        from resnet_deploy.bench.plan import plan_for_artifacts, run_plan
        from resnet_deploy.bench.report import write_markdown, write_plot
        from resnet_deploy.bench.timing import TimingConfig
        from resnet_deploy.environment import capture_environment

        sizes = sorted({int(size) for size in options.bench_batch_sizes.split(",") if size.strip()})
        device = "cuda" if torch.cuda.is_available() else "cpu"
        plan = plan_for_artifacts(result.artifacts, backends=None, precisions=None, device=device, threads=None,
                                  include_copies=True)
        bench = run_plan(plan, batch_sizes=sizes, timing=TimingConfig(duration_s=options.bench_duration),
                         include_copies=True, environment={})
        bench.environment = capture_environment()  # after the run, as `bench` does
        if not bench.results:
            raise UsageError("nothing could be measured here; see the skipped rows for why")
        write_plot(bench, plot)
        write_markdown(bench, report, command="resnet-deploy " + shlex.join(argv), plot=plot)
        return {"command": "resnet-deploy " + shlex.join(argv), **bench.to_dict()}, 0

    step = _run_step("bench", "Benchmark latency and throughput", argv, hooks, call)
    result.steps.append(step)
    _require(step)
