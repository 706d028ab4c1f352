"""The one build pipeline: export if needed → precision (FP16 / calibrated INT8, made and checked in ONNX) → target.

`build(BuildRequest)` is what `resnet-deploy build-engine` runs; bench and the demo call it (or its
stages, `export_source`, `make_precision` and `compile_artifact`, when they cache the intermediate
models themselves). Every usage error that needs no work is raised before any work is done. The
library never prints: progress, notes and warnings go to the `BuildListener` the caller supplies.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from resnet_deploy.artifacts import manifest_path, onnx_stem
from resnet_deploy.errors import UsageError
from resnet_deploy.paths import require_writable_folder
from resnet_deploy.targets.base import BuildResult, Target, TargetRequest, resolve_target

if TYPE_CHECKING:
    import numpy as np

    from resnet_deploy.card import ModelCard
    from resnet_deploy.classifier_card import CardFlags
    from resnet_deploy.classifier_onnx import CleanReport
    from resnet_deploy.precision import PrecisionResult

TARGETS = ("auto", "onnxruntime", "tensorrt", "openvino")
CPU_TARGETS = ("onnxruntime", "openvino")  # judged on this CPU before they are written (verify.py)
CALIB_METHODS = ("entropy", "minmax", "percentile", "auto")
DEVICES = ("cpu", "cuda")
CHECK_IMAGES = 128  # real images an FP16 model is checked on (from calib_data)
TENSORRT_FLAGS = {"min_batch": "--min-batch", "opt_batch": "--opt-batch", "max_batch": "--max-batch",
                  "workspace_bytes": "--workspace", "opt_level": "--opt-level", "timing_cache": "--timing-cache",
                  "version_compatible": "--version-compatible", "hardware_compatibility": "--hardware-compatibility"}


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
    fp16: bool = False
    int8: bool = False
    bf16: bool = False
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
    tensorrt: dict[str, Any] = field(default_factory=dict)  # the TensorRT options given (TENSORRT_FLAGS keys)
    card_flags: CardFlags | None = None  # preprocessing of an ONNX without a model card (classifier_onnx)

    @property
    def tag(self) -> str:
        """The precision as it appears in file names."""
        if self.int8:
            return "int8-fp16" if self.fp16 else "int8"
        return "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"


@dataclass
class BuildReport:
    target: str
    target_reason: str
    source: Path
    source_sha256: str
    exported: bool
    precision: str
    fp16_remainder: bool
    precision_onnx: Path | None  # kept beside the artifact (None: FP32, or ONNX Runtime, where it is temporary)
    precision_result: PrecisionResult | None
    artifact: BuildResult
    output: Path
    clean: CleanReport | None = None  # a card-less (foreign) source: what cleaning its graph changed
    cleaned_onnx: Path | None = None  # ... and the cleaned FP32 model with its card (None: it was temporary)
    here: Any = None  # verify.ArtifactVerdict: the artifact judged on this CPU (None: a GPU target, or no images)

    def summary(self) -> list[tuple[str, str]]:
        """(what, value) rows saying what was built, from what, and how each step was checked."""
        remainder = " (FP16 remainder)" if self.fp16_remainder else ""
        rows = [("target", f"{self.target} ({self.target_reason})"), ("source", str(self.source)),
                ("precision", self.precision + remainder)]
        if self.clean is not None:
            where = f" → {self.cleaned_onnx}" if self.cleaned_onnx is not None else ""
            rows.append(("cleaned", "; ".join(self.clean.changes) + where))
        precision = self.precision_result
        if precision is not None:
            if precision.judged is not None:
                what = "Q/DQ arithmetic" if precision.precision == "int8" else "model"
                rows.append(("vs FP32", f"{what}, {precision.check_images} {precision.check_data}: "
                                        f"{precision.judged.describe()}"))
            else:
                rows.append(("vs FP32", f"top-1 agreement {precision.agreement:.2f}%, max |Δ logit| "
                                        f"{precision.max_abs_logit_diff:.4g} on {precision.check_images} "
                                        f"{precision.check_data}"))
            rows.append(("gate", precision.gate_text()))
            if precision.mixed is not None:
                kept = ", ".join(item["block"] for item in precision.mixed.kept_out)
                rows.append(("mixed precision", f"full INT8 {precision.mixed.full_int8_agreement:.2f}%; kept out of "
                                                f"INT8 ({precision.mixed.remainder}): {kept}"))
            if precision.float_by_rule:
                counts = Counter(node.op_type for node in precision.float_by_rule)
                rows.append(("kept in float", "by rule (transformer attention and normalization): " + ", ".join(
                    f"{op} ×{n}" for op, n in counts.items())))
            calib = precision.calibration
            if calib is not None:
                caches = ", ".join(f"{m}: {s['cache']['status']}" for m, s in calib.scores.items())
                method = calib.method if calib.requested == calib.method else f"{calib.requested} → {calib.method}"
                where = "random images" if calib.random else f"images from {calib.data}"
                rows.append(("calibration", f"{method}, {calib.samples} {where}, seed {calib.seed}; cache {caches}"))
            if self.precision_onnx is not None:
                rows.append(("precision ONNX", str(self.precision_onnx)))
        target_rows = self.artifact.summary
        if self.here is not None:
            rows += self.here.summary()
            # The target's own load check (random inputs) is informational once the artifact was judged here.
            target_rows = [(what if what != "artifact check" else "load check", value + (
                "; informational" if what == "artifact check" else "")) for what, value in target_rows]
        return [*rows, *target_rows, ("artifact", str(self.output)), ("manifest", str(self.artifact.manifest_path))]

    def to_dict(self) -> dict[str, Any]:
        check = None
        if self.precision_result is not None:
            # Where the precision model is now: beside the artifact, or nowhere (it was a temporary file).
            check = {**self.precision_result.to_dict(),
                     "path": str(self.precision_onnx) if self.precision_onnx is not None else None}
        return {
            "target": self.target,
            "target_reason": self.target_reason,
            "source_onnx": {"path": str(self.source), "sha256": self.source_sha256, "exported": self.exported},
            "precision": self.precision,
            "fp16_remainder": self.fp16_remainder,
            "precision_onnx": str(self.precision_onnx) if self.precision_onnx is not None else None,
            "precision_check": check,
            "artifact": self.artifact.to_dict(),
            "output": str(self.output),
            "clean": self.clean.to_dict() if self.clean is not None else None,
            "cleaned_onnx": str(self.cleaned_onnx) if self.cleaned_onnx is not None else None,
            "artifact_check_here": self.here.to_dict() if self.here is not None else None,
        }


def build(request: BuildRequest, listener: BuildListener | None = None) -> BuildReport:
    """Build the artifact `request` asks for; raises UsageError/BackendUnavailable/CheckFailed (writing nothing)."""
    say = listener or BuildListener()
    prebuilt = build_finetuned_int8(request, say)  # a finetune-int8 model: its trained scales, no calibration
    if prebuilt is not None:
        return prebuilt
    check_request(request)
    target, reason = resolve_target(request.target, request.device)
    say.info(f"target: {target.name} ({reason})")
    for message in check_for_target(request, target.name):
        say.warn(message)
    trt_options = tensorrt_options(request.tensorrt) if target.name == "tensorrt" else None
    foreign = foreign_card(request, say)  # a card-less ONNX: its card from the flags, or the flags it lacks

    source, exported = export_source(request, say)
    from resnet_deploy.atomic import sha256_file
    from resnet_deploy.precision import read_source

    output = request.output if request.output is not None else default_output(source, request.tag, target,
                                                                                request.device)
    check_output(output, target, source)
    if request.calib_data is not None and not (request.int8 or request.fp16):
        say.warn("--calib-data ignored: it calibrates --int8 (and checks --fp16)")

    cpu_target = cpu_target_for(request, target.name, say)
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-build-") as tmp:
        # ONNX Runtime ships the precision model itself (optimized): it is a temporary file there.
        keep = target.name != "onnxruntime"
        folder = output.parent if keep else Path(tmp)
        original, clean = source, None
        if foreign is not None:
            source, clean = adopt_foreign(source, foreign, folder / f"{onnx_stem(source)}.clean.onnx", say)
        src = read_source(source)
        precision_path = folder / f"{onnx_stem(original)}.{request.tag}.onnx"
        result = None
        if request.int8 or request.fp16:
            if precision_path.resolve() == source.resolve():
                raise UsageError(f"{source}: the {request.tag} model would overwrite its FP32 source; rename the "
                                 "source")
            if keep and manifest_path(precision_path).is_file():  # e.g. an ONNX Runtime artifact of that name
                raise UsageError(f"{precision_path}: the {target.name} build keeps its {request.tag} ONNX model "
                                 "there, but that file is a built artifact (it has a manifest); move it, or give "
                                 "the ONNX Runtime artifact its default name (<name>.<precision>.cpu.onnx)")
            if keep:
                refuse_foreign_file(precision_path, {src.sha256, sha256_file(original)}, f"the {target.name} build "
                                    f"keeps its {request.tag} ONNX model (made from {original.name}) there")
            result = make_precision(src, precision_path, request, say, cache_base=precision_path if keep else output,
                                    cpu_target=cpu_target, shown_as=output if not keep else None)
        model = precision_path if result is not None else source
        say.info(f"building the {target.name} artifact → {output}")
        if target.name in CPU_TARGETS:
            built, here = compile_checked(target, model, output, request=request, src=src, result=result,
                                          cpu_target=cpu_target, rebuild=rebuild_command(request, original, target),
                                          say=say)
        else:
            built, here = compile_artifact(target, model, output, precision=request.precision, card=src.card,
                                           device=request.device, tensorrt=trt_options), None
        for message in built.warnings:
            say.warn(message)
    return BuildReport(target.name, reason, original, sha256_file(original), exported, request.precision,
                       bool(request.int8 and request.fp16), model if result is not None and keep else None,
                       result, built, output, clean, source if clean is not None and keep else None, here)


def cpu_target_for(request: BuildRequest, target: str, say: BuildListener) -> str | None:
    """The CPU class an INT8 CPU artifact is built for (`--cpu`; native: this machine's); None for other builds."""
    from resnet_deploy.precision.isa import resolve_cpu_target, this_cpu, weight_bits_for

    if target not in CPU_TARGETS:
        if request.cpu != "native":
            say.warn(f"--cpu {request.cpu} ignored: it chooses INT8 weights for CPU targets, the target is {target} "
                     "(GPU integer kernels accumulate in 32 bits: 8-bit weights)")
        return None
    cpu_target = resolve_cpu_target(request.cpu)
    if request.int8:
        here = this_cpu()
        bits = weight_bits_for(cpu_target)
        whose = "this machine's" if request.cpu == "native" else "asked for"
        say.info(f"CPU: {here.describe()}; INT8 for {cpu_target} ({whose}): {bits}-bit weights")
    return cpu_target


def rebuild_command(request: BuildRequest, source: Path, target: Target) -> str:
    """The build-engine command that makes this artifact again (the self-check's error adds `--cpu CLASS`)."""
    parts = ["resnet-deploy build-engine", f"--onnx {source}"]
    parts += [flag for flag, on in (("--int8", request.int8), ("--fp16", request.fp16), ("--bf16", request.bf16))
              if on]
    if request.calib_data is not None:
        parts.append(f"--calib-data {request.calib_data}")
    parts.append(f"--target {target.name}")
    if request.output is not None:
        parts.append(f"-o {request.output}")
    return " ".join(parts)


def compile_checked(target: Target, model: Path, output: Path, *, request: BuildRequest, src: Any,
                    result: PrecisionResult | None, cpu_target: str | None, rebuild: str, say: BuildListener,
                    check_set: Any = None) -> tuple[BuildResult, Any]:
    """Compile a CPU artifact in a staging folder beside `output`, judge it on this CPU against FP32 on the
    held-out images (one gate: `verify.judge_here`), record the CPU and the self-check in its manifest, and only
    then move it into place; a refused artifact leaves nothing behind."""
    import os
    import shutil

    from resnet_deploy.verify import check_set_for, judge_here

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        staged = staging / output.name
        built = compile_artifact(target, model, staged, precision=request.precision, card=src.card,
                                 device=request.device)
        check_set = check_set if check_set is not None else check_set_for(result, request, src, say)
        here = judge_here(staged, built.manifest, model=model, src=src, precision=request.precision,
                          check_set=check_set, cpu_target=cpu_target, min_agreement=request.min_agreement,
                          rebuild=rebuild, shown_as=output, progress=say.progress)
        built.manifest.write(staged)
        files = sorted(staging.iterdir(), key=lambda f: (f.name == manifest_path(staged).name, f.name == staged.name))
        for file in files:  # the artifact's companions (.bin) first, the manifest last
            os.replace(file, output.parent / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    built.path, built.manifest_path = output, manifest_path(output)
    if isinstance(built.details, dict):
        for key in ("path", "manifest_path", "bin_path"):
            if isinstance(built.details.get(key), str):
                built.details[key] = str(output.parent / Path(built.details[key]).name)
    return built, here


def compile_artifact(target: Target | str, model: Path, output: Path, *, precision: str, card: ModelCard,
                     device: str = "cpu", check_images: np.ndarray | None = None,
                     tensorrt: Any = None) -> BuildResult:
    """The target step alone: compile an ONNX model that already carries `precision`."""
    if isinstance(target, str):
        from resnet_deploy.targets.base import get_target

        target = get_target(target)
    return target.build(TargetRequest(model=model, output=output, precision=precision, card=card, device=device,
                                      check_images=check_images, tensorrt=tensorrt))


# --- an INT8 model made by finetune-int8 ----------------------------------------------------------------------


def build_finetuned_int8(request: BuildRequest, say: BuildListener) -> BuildReport | None:
    """Compile a Q/DQ ONNX from `finetune-int8` (its `resnet_deploy.quantization` carries a `qat` record) for the
    target as it is: a calibration would replace the trained scales. None for any other source."""
    from resnet_deploy.precision.qat_export import qat_source

    if request.onnx is None or not request.onnx.is_file():
        return None
    record = qat_source(request.onnx)
    if record is None:
        return None
    source = request.onnx
    if not request.int8 or request.fp16 or request.bf16:
        raise UsageError(f"{source}: an INT8 Q/DQ model from finetune-int8; build it with --int8 alone (its scales "
                         "are trained; nothing is recalibrated)")
    if any(v is not None for v in (request.arch, request.checkpoint, request.num_classes, request.opset)):
        raise UsageError("give --onnx PATH or the export flags (--depth/--arch/--checkpoint/--num-classes/--opset), "
                         "not both")
    from resnet_deploy.atomic import sha256_file
    from resnet_deploy.card import CARD_METADATA_KEY, ModelCard
    from resnet_deploy.classifier_onnx import load_onnx
    from resnet_deploy.precision.isa import runs_exactly_on, this_cpu

    target, reason = resolve_target(request.target, request.device)
    say.info(f"target: {target.name} ({reason})")
    for message in check_for_target(request, target.name):
        say.warn(message)
    trt_options = tensorrt_options(request.tensorrt) if target.name == "tensorrt" else None
    output = request.output if request.output is not None else default_output(source, "int8", target, request.device)
    check_output(output, target, source)
    props = {p.key: p.value for p in load_onnx(source).metadata_props}
    card = ModelCard.from_json(props[CARD_METADATA_KEY])
    bits, cpu_class = record.get("weight_bits", 8), this_cpu().cpu_class
    say.info(f"INT8 from finetune-int8 ({record['qat'].get('iterations')} iterations, {bits}-bit weights for "
             f"{record.get('cpu_target')}): its trained scales are kept, nothing is calibrated")
    if target.name != "tensorrt" and not runs_exactly_on(int(bits), cpu_class):
        say.warn(f"{source}: {bits}-bit weights saturate the integer kernels of this CPU ({cpu_class}); fine-tune "
                 "with --cpu native or --cpu portable for 7-bit weights")
    say.info(f"building the {target.name} artifact → {output}")
    if target.name not in CPU_TARGETS:
        built, here = compile_artifact(target, source, output, precision="int8", card=card, device=request.device,
                                       tensorrt=trt_options), None
    else:
        # Its accuracy against the FP32 teacher was judged when it was fine-tuned; here the artifact is held to the
        # model's own Q/DQ arithmetic on this CPU (saturation), and gets the CPU record and self-check.
        src = SimpleNamespace(path=source, card=card, random_weights=False,
                              input_shape=[None, 3, card.preprocessing.input_size, card.preprocessing.input_size])
        check_set = None
        if request.calib_data is not None:
            from resnet_deploy.onnx_check import arithmetic_session, run_logits
            from resnet_deploy.precision.common import CheckSet
            from resnet_deploy.verify import CHECK_IMAGES, labelled_images

            images, labels = labelled_images(request.calib_data, card, request.check_images or CHECK_IMAGES,
                                             request.calib_seed)
            arithmetic = run_logits(arithmetic_session(source), images)
            check_set = CheckSet(images, labels, arithmetic, arithmetic, "images (reference: its Q/DQ arithmetic)")
        built, here = compile_checked(target, source, output, request=request, src=src, result=None,
                                      cpu_target=record.get("cpu_target") or cpu_class,
                                      rebuild=rebuild_command(request, source, target), say=say, check_set=check_set)
    for message in built.warnings:
        say.warn(message)
    return BuildReport(target.name, reason, source, sha256_file(source), False, "int8", False, None, None, built,
                       output, here=here)


# --- checks that need no work ---------------------------------------------------------------------------------


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
    if request.calib_method not in CALIB_METHODS:
        raise UsageError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {request.calib_method!r}")
    if request.calib_samples < 1:
        raise UsageError(f"--calib-samples must be positive, got {request.calib_samples}")
    if request.check_images is not None and request.check_images < 2:
        raise UsageError(f"--check-images must be at least 2 (the budget search splits them in two), "
                         f"got {request.check_images}")
    if request.bf16 and (request.fp16 or request.int8):
        raise UsageError("--bf16 is the OpenVINO inference precision of the FP32 model; it does not combine with "
                         "--fp16 or --int8")
    if request.int8 and request.calib_data is None and not request.random_calibration:
        raise UsageError("--int8 needs calibration images: pass --calib-data DIR (any folder of images, e.g. a few "
                         "hundred from the training set), or --random-calibration for latency work only")
    if request.random_calibration and request.calib_data is not None:
        raise UsageError("give --calib-data or --random-calibration, not both")
    if request.random_calibration and not request.int8:
        raise UsageError("--random-calibration calibrates --int8; add --int8")
    if request.calib_data is not None and not request.calib_data.is_dir():
        raise UsageError(f"{request.calib_data}: no such calibration folder")
    from resnet_deploy.precision.isa import resolve_cpu_target

    resolve_cpu_target(request.cpu)  # a bad --cpu is refused before any work


def check_for_target(request: BuildRequest, target: str) -> list[str]:
    """The checks that depend on the target `auto` chose; returns warnings (TensorRT flags `auto` cannot use)."""
    if request.bf16 and target != "openvino":
        raise UsageError(f"--bf16 is an OpenVINO inference precision; the target is {target} (use --target openvino)")
    if request.int8 and request.fp16 and target == "openvino":
        raise UsageError("--int8 --fp16 makes an FP16 remainder for TensorRT; OpenVINO picks the precision of the "
                         "layers it does not quantize itself (its inference precision): use --int8 alone")
    given = [k for k, v in request.tensorrt.items() if v is not None and v is not False]
    if not given or target == "tensorrt":
        return []
    flags = ", ".join(TENSORRT_FLAGS[k] for k in given)
    if request.target != "auto":
        raise UsageError(f"{flags}: TensorRT options, but the target is {target}")
    return [f"{flags} ignored: TensorRT options, but the target is {target}"]


def tensorrt_options(given: dict[str, Any]) -> Any:
    from resnet_deploy.targets.tensorrt import TensorRTBuildOptions, parse_byte_size

    given = {k: v for k, v in given.items() if v is not None and v is not False}
    if "workspace_bytes" in given:
        given = {**given, "workspace_bytes": parse_byte_size(given["workspace_bytes"])}
    return TensorRTBuildOptions(**given).validated()


# --- files ----------------------------------------------------------------------------------------------------


def default_output(source: Path, tag: str, target: Target, device: str) -> Path:
    """resnet50.onnx → resnet50.int8.cpu.onnx (ONNX Runtime), resnet50.int8.plan, resnet50.int8.xml."""
    return source.with_name(f"{onnx_stem(source)}.{tag}{target.default_suffix(device)}")


def check_output(path: Path, target: Target, source: Path) -> None:
    if path.suffix.lower() not in target.suffixes:
        raise UsageError(f"--output {path}: a {target.name} artifact is named {' or '.join(target.suffixes)}")
    if path.resolve() == source.resolve():
        raise UsageError(f"--output {path} is the source model; choose another name")
    if path.is_dir():
        raise UsageError(f"--output {path} is a folder; give a file name")
    require_writable_folder(path)  # the default output too, before the work starts


def refuse_foreign_file(path: Path, sources: set[str], why: str) -> None:
    """Refuse to overwrite `path` unless it is absent or an earlier build's model of the same source: its
    metadata names one of the `sources` hashes as the ONNX it came from, or (a card-less source, cleaned anew
    each build) as the file its card was made from. A file the user made, or one of another model, is theirs."""
    import json

    from resnet_deploy.artifacts import SOURCE_ONNX_SHA256_KEY, onnx_metadata
    from resnet_deploy.card import CARD_METADATA_KEY

    if not path.exists():
        return
    ours = False
    if path.is_file():
        try:
            meta = onnx_metadata(path)
            lineage = json.loads(meta.get(CARD_METADATA_KEY) or "{}").get("lineage") or {}
            recorded = {meta.get(SOURCE_ONNX_SHA256_KEY), meta.get("source_sha256"), lineage.get("source_sha256")}
            ours = SOURCE_ONNX_SHA256_KEY in meta and bool(recorded & sources)
        except (UsageError, ValueError, AttributeError):  # not an ONNX model of ours at all
            ours = False
    if not ours:
        raise UsageError(f"{path}: {why}, but that file is not an earlier build's model of this source; it would be "
                         "overwritten: move it, or give --output another name or folder")


# --- a foreign (card-less) source -------------------------------------------------------------------------------


def foreign_card(request: BuildRequest, say: BuildListener) -> ModelCard | None:
    """The card of a card-less `--onnx` made from `request.card_flags` (None: the model carries its own card).
    Refuses a graph that is no image classifier, or missing flags (naming them), before any work."""
    if request.onnx is None:
        if request.card_flags is not None:
            raise UsageError("--mean/--std/--input-size/--resize-size/--interpolation/--classes describe an ONNX "
                             "without a model card (--onnx); an exported model gets its card from its checkpoint")
        return None
    from resnet_deploy.classifier_card import card_from_flags, has_card
    from resnet_deploy.classifier_onnx import load_onnx

    model = load_onnx(request.onnx)
    if has_card(model):
        from resnet_deploy.artifact_checks import metadata_of
        from resnet_deploy.card import CARD_METADATA_KEY, ModelCard

        # a damaged card (not UTF-8, not JSON) is refused here, naming the file
        ModelCard.from_json(metadata_of(model, request.onnx)[CARD_METADATA_KEY], request.onnx)
        if request.card_flags is not None:
            say.warn(f"{request.onnx} carries its model card; the preprocessing flags are ignored")
        return None
    return card_from_flags(model, request.onnx, request.card_flags)


def adopt_foreign(source: Path, card: ModelCard, path: Path, say: BuildListener) -> tuple[Path, CleanReport]:
    """Clean a foreign graph (BatchNorm folded, Identity dropped, constants folded, opset raised; verified
    against the original), give it `card`, and write it to `path`: the FP32 source of the rest of the build."""
    from resnet_deploy.atomic import sha256_file
    from resnet_deploy.classifier_card import attach_card
    from resnet_deploy.classifier_onnx import classifier_io, clean_graph, load_onnx, save_onnx

    say.info(f"{source}: no model card; cleaning the graph and carding it from the flags → {path}")
    report = clean_graph(source, path, input_size=card.preprocessing.input_size)
    for line in report.changes:
        say.info(f"  {line}")
    model = load_onnx(path)
    attach_card(model, card, classifier_io(model, path), source_sha256=sha256_file(source))
    save_onnx(model, path)
    return path, report


# --- the stages -----------------------------------------------------------------------------------------------


def export_source(request: BuildRequest, say: BuildListener) -> tuple[Path, bool]:
    """The FP32 ONNX to start from: `request.onnx`, or a fresh export of the named model (card in its metadata)."""
    if request.onnx is not None:
        return request.onnx, False
    from resnet_deploy.checkpoints import load_model, random_model
    from resnet_deploy.export import default_output_path

    if request.checkpoint is None:
        assert request.arch is not None
        loaded = random_model(request.arch, num_classes=request.num_classes)
        say.warn(f"no --checkpoint: exporting {request.arch} with RANDOM weights (fine for latency work, useless "
                 "for accuracy)")
    else:
        loaded = load_model(request.checkpoint, arch=request.arch, num_classes=request.num_classes)
    folder = request.output.parent if request.output is not None else Path(".")
    return export_model(loaded, folder / default_output_path(loaded.card.arch).name, say, opset=request.opset), True


def export_model(loaded: Any, path: Path, say: BuildListener, *, opset: int | None = None) -> Path:
    """The FP32 ONNX of a loaded model (dynamic batch, verified against PyTorch), card in its metadata."""
    from resnet_deploy.export import export_onnx

    say.info(f"exporting {loaded.card.arch} → {path}")
    return Path(export_onnx(loaded, path, opset=opset).path)


def make_precision(src: Any, path: Path, request: BuildRequest, say: BuildListener, *,
                   cache_base: Path | None = None, cpu_target: str | None = None,
                   shown_as: Path | None = None) -> PrecisionResult:
    """The FP16 or calibrated INT8 ONNX of the FP32 source `src` (from `precision.read_source`), at `path`.
    INT8 weights take 7 bits when `cpu_target` is a CPU class whose integer kernels saturate (`isa.py`);
    `shown_as` is what errors call the output (the user's artifact, when `path` is a temporary file)."""
    from resnet_deploy.precision import convert_fp16, quantize_int8
    from resnet_deploy.precision.isa import weight_bits_for

    if request.int8:
        what = "random images" if request.random_calibration else str(request.calib_data)
        say.info(f"INT8: calibrating {src.path.name} on {what} ({request.calib_method}, {request.calib_samples} "
                 f"images, seed {request.calib_seed})")
        result = quantize_int8(src.path, path, calib_data=request.calib_data, samples=request.calib_samples,
                               method=request.calib_method, fp16_remainder=request.fp16, seed=request.calib_seed,
                               random_calibration=request.random_calibration, cache_base=cache_base,
                               min_agreement=request.min_agreement,
                               max_fallback_layers=request.max_fallback_layers, progress=say.progress,
                               weight_bits=weight_bits_for(cpu_target) if cpu_target is not None else 8,
                               cpu_target=cpu_target, shown_as=shown_as,
                               **({"check_samples": request.check_images} if request.check_images else {}))
    else:
        images = None
        if request.calib_data is not None:
            images = real_images(request.calib_data, src.card, request.check_images or CHECK_IMAGES,
                                 request.calib_seed)
        else:
            say.warn("FP16 is checked on random inputs only (no gate); pass --calib-data DIR to check it on real "
                     "images")
        say.info(f"FP16: converting {src.path.name}")
        result = convert_fp16(src.path, path, check_images=images, min_agreement=request.min_agreement,
                              seed=request.calib_seed)
    if result.calibration is not None and len(result.calibration.scores) > 1:
        for method, score in result.calibration.scores.items():
            say.info(f"  {method}: top-1 agreement {score['agreement']:.2f}%, max |Δ logit| "
                     f"{score['max_abs_logit_diff']:.4g}")
        say.info(f"  kept {result.calibration.method}")
    for message in result.warnings:
        say.warn(message)
    return result


def real_images(folder: Path, card: ModelCard, count: int, seed: int) -> np.ndarray:
    """`count` images from `folder` (evenly across class subfolders) through the card's eval transform."""
    from resnet_deploy.data import open_image_folder_unlabelled, sample_images
    from resnet_deploy.precision.calibration import calibration_folder

    return sample_images(open_image_folder_unlabelled(calibration_folder(folder)), card.preprocessing, count, seed)
