"""What build-engine is asked for (`BuildRequest`), where it reports (`BuildListener`), and every usage error
that needs no work done: those the request alone shows, and those that depend on the target `auto` chose."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_deploy import registry
from resnet_deploy.errors import UsageError

if TYPE_CHECKING:
    from resnet_deploy.foreign.card import CardFlags

TARGETS = ("auto", *registry.target_names())
CPU_TARGETS = tuple(b.name for b in registry.backends() if b.verified_on_cpu)  # judged on this CPU (verify.py)
CALIB_METHODS = ("entropy", "minmax", "percentile", "auto")
DEVICES = ("cpu", "cuda")
CHECK_IMAGES = 128  # real images an FP16 model is checked on (from calib_data)
# Every target-only build option (request key → flag), from the declarations (TensorRT's batch profile, ...).
TARGET_FLAGS = {key: flag for b in registry.backends() for key, flag in b.options.items()}


@dataclass
class BuildListener:
    """Where the pipeline reports: `info`/`warn` get one line each, `progress` gets (phase, done, total)."""

    info: Callable[[str], None] = lambda message: None
    warn: Callable[[str], None] = lambda message: None
    progress: Callable[[str, int, int], None] | None = None


@dataclass(frozen=True)
class BuildRequest:
    onnx: Path | None = None  # the FP32 ONNX to start from; None: export `arch`/`checkpoint` first
    arch: str | None = None
    checkpoint: Path | None = None
    num_classes: int | None = None
    opset: int | None = None
    precision: str = "fp32"  # a declared precision (registry/precisions.py)
    fp16_remainder: bool = False  # INT8: FP16 for what is not quantized (`--int8 --fp16`)
    calib_data: Path | None = None
    calib_samples: int = 512
    calib_method: str = "percentile"
    calib_seed: int = 0
    random_calibration: bool = False
    min_agreement: float | None = None
    max_fallback_layers: int = 8  # INT8 mixed precision: layers that may stay out of INT8 (0: strict)
    check_images: int | None = None  # real images the FP16/INT8 check runs on (None: 128 FP16, 1000 INT8)
    cpu: str = "native"  # INT8 for CPU targets: the instruction-set class it is for (precision/isa.py)
    target: str = "auto"
    device: str = "cpu"
    output: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)  # target-only options given (TARGET_FLAGS keys)
    card_flags: CardFlags | None = None  # preprocessing of an ONNX without a model card (foreign/)

    @property
    def spec(self) -> registry.Precision:
        return registry.precision(self.precision)

    @property
    def tag(self) -> str:
        """The precision as it appears in file names (int8-fp16 with an FP16 remainder)."""
        return self.spec.tag("fp16" if self.fp16_remainder else None)

    @property
    def made_in_onnx(self) -> bool:
        """The precision is made (and checked) as an ONNX model before the target compiles it."""
        return self.spec.maker is not None


def precision_from_flags(**flags: bool) -> dict[str, Any]:
    """build-engine's precision flags (`fp16=`, `int8=`, `bf16=`: each declared precision's name) as the request's
    one precision, and INT8's FP16 remainder (`--int8 --fp16`: a precision with its declared remainder)."""
    chosen = [name for name, on in flags.items() if on]
    for name in chosen:
        registry.precision(name)  # an undeclared flag is a programming error
    if len(chosen) == 2:
        for main, rest in (chosen, chosen[::-1]):
            if rest in registry.precision(main).remainders:
                return {"precision": main, "fp16_remainder": rest == "fp16"}
    if len(chosen) > 1:
        named = " ".join(str(registry.precision(name).flag) for name in chosen)
        combos = [f"{p.flag} {registry.precision(r).flag}" for p in registry.precisions() for r in p.remainders]
        raise UsageError(f"{named}: these precisions do not combine (one precision per build; {', '.join(combos)} "
                         "converts what the first leaves unconverted to the second)")
    return {"precision": chosen[0] if chosen else "fp32", "fp16_remainder": False}


def precision_flags(request: BuildRequest) -> list[str]:
    """The flags that ask for the request's precision (`--int8 --fp16`), for messages and rebuild commands."""
    flags = [request.spec.flag] if request.spec.flag else []
    return flags + (["--fp16"] if request.fp16_remainder else [])


def check_request(request: BuildRequest) -> None:
    """Every usage error that needs no work done, before any work is done."""
    export_flags = (request.arch, request.checkpoint, request.num_classes, request.opset)
    if request.onnx is not None and any(flag is not None for flag in export_flags):
        raise UsageError("give --onnx PATH or the export flags (--depth/--arch/--checkpoint/--num-classes/--opset), "
                         "not both")
    if request.onnx is None and request.arch is None and request.checkpoint is None:
        raise UsageError("name a model: --onnx PATH (from `resnet-deploy export`), or --depth/--arch/--checkpoint "
                         "to export one first")
    if request.onnx is not None and not request.onnx.is_file():
        raise UsageError(f"{request.onnx}: no such ONNX file")
    if request.target not in TARGETS:
        raise UsageError(f"--target must be one of {', '.join(TARGETS)}, got {request.target!r}")
    if request.device not in DEVICES:
        raise UsageError(f"--device must be cpu or cuda, got {request.device!r}")
    if request.precision not in registry.precision_names():
        raise UsageError(f"precision must be one of {', '.join(registry.precision_names())}, got "
                         f"{request.precision!r}")
    if request.fp16_remainder and "fp16" not in request.spec.remainders:
        raise UsageError(f"an FP16 remainder needs --int8; {request.precision} has none")
    if request.calib_method not in CALIB_METHODS:
        raise UsageError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {request.calib_method!r}")
    if request.calib_samples < 1:
        raise UsageError(f"--calib-samples must be positive, got {request.calib_samples}")
    if request.check_images is not None and request.check_images < 2:
        raise UsageError(f"--check-images must be at least 2 (the budget search splits them in two), "
                         f"got {request.check_images}")
    calibrated = request.spec.calibrated
    if calibrated and request.calib_data is None and not request.random_calibration:
        raise UsageError(f"{request.spec.flag} needs calibration images: pass --calib-data DIR (any folder of images, "
                         "e.g. a few hundred from the training set), or --random-calibration for latency work only")
    if request.random_calibration and request.calib_data is not None:
        raise UsageError("give --calib-data or --random-calibration, not both")
    if request.random_calibration and not calibrated:
        raise UsageError("--random-calibration calibrates --int8; add --int8")
    if request.calib_data is not None and not request.calib_data.is_dir():
        raise UsageError(f"{request.calib_data}: no such calibration folder")
    from resnet_deploy.precision.isa import resolve_cpu_target

    resolve_cpu_target(request.cpu)  # a bad --cpu is refused before any work


def check_for_target(request: BuildRequest, target: str) -> list[str]:
    """The checks that depend on the target `auto` chose (its declaration: the precisions it builds, the options
    only it takes); returns warnings (another target's options, which `auto` cannot use)."""
    spec = registry.backend(target)
    flags = " ".join(precision_flags(request))
    if spec.source == "card" and request.onnx is not None:
        raise UsageError(f"--onnx {request.onnx}: {spec.display} compiles the PyTorch model itself, not an ONNX graph; "
                         "give --checkpoint CARD or --depth/--arch")
    if request.precision not in spec.precisions:
        builders = [registry.backend(b) for b in registry.target_names()
                    if request.precision in registry.backend(b).precisions]
        raise UsageError(f"{flags}: {spec.display} does not build {request.spec.display}, "
                         f"{' or '.join(b.display for b in builders)} does; the target is {target} "
                         f"(use --target {' or --target '.join(b.name for b in builders)})")
    if request.tag != request.precision and request.tag in spec.missing:  # OpenVINO chooses the remainder itself
        raise UsageError(f"{flags}: {spec.missing[request.tag]}")
    given = [k for k, v in request.options.items() if v is not None and v is not False and k not in spec.options]
    if not given:
        return []
    owners = sorted({b.display for b in registry.backends() if set(given) & set(b.options)})
    named = ", ".join(TARGET_FLAGS.get(k, k) for k in given)
    if request.target != "auto":
        raise UsageError(f"{named}: {'/'.join(owners)} options, but the target is {target}")
    return [f"{named} ignored: {'/'.join(owners)} options, but the target is {target}"]
