"""The build's last gate: the artifact a CPU target produced, compiled on this CPU, judged against FP32.

The precision step (`precision/`) judges the ONNX model's own arithmetic; what ships is the target's
artifact, run by this machine's kernels, which can compute something else (INT8 kernels that saturate
without VNNI, a bf16 fallback). So before a CPU artifact is written, it is opened as `validate` and
`bench` open it and run on the same held-out images, against the same FP32 logits, under the same gate
(`gates.build_gate_for`: one threshold, `--min-agreement` sets it). For INT8 the artifact is also held
against the Q/DQ arithmetic of its own model on those images: a gap of more than `SATURATION_GAP` points
of agreement is reported as kernel saturation (with the `--cpu` that fixes it), not as a calibration
problem. Where the artifact is built for another class of CPU than this one (`--cpu vnni` on an AVX2
machine), this machine's kernels say nothing about the target's: the arithmetic is judged instead, and
the kernels here are reported as information.

The manifest then records this CPU (`isa`) and the self-check (`selfcheck.py`) that runs wherever the
artifact is opened on another class of CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnet_deploy.errors import CheckFailed
from resnet_deploy.gates import SATURATION_GAP, build_gate_for, judge, render_gate, saturating
from resnet_deploy.samples import batches_of, folder_images

if TYPE_CHECKING:
    from resnet_deploy.artifacts import Manifest
    from resnet_deploy.precision.common import CheckSet, Judged

CHECK_IMAGES = 128  # FP32/FP16/bf16 artifacts: real images from --calib-data, when given


@dataclass
class ArtifactVerdict:
    """The artifact judged on this CPU."""

    cpu: dict[str, Any]  # this machine: class and flags
    cpu_target: str | None  # INT8: the class the weights were made for
    weight_bits: int | None
    here: Judged | None  # the artifact on this CPU against FP32 (None: no real images to judge on)
    arithmetic: Judged | None  # INT8: the Q/DQ arithmetic of the same model on the same images
    gate: str  # the gate in words
    judged_on: str  # "this CPU's kernels" or "the Q/DQ arithmetic (the artifact targets another CPU class)"
    passed: bool
    informational: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def kernel_gap(self) -> float | None:
        """Points of agreement the kernels here trail the arithmetic by (positive: worse)."""
        if self.here is None or self.arithmetic is None:
            return None
        return self.arithmetic.comparison.agreement - self.here.comparison.agreement

    def summary(self) -> list[tuple[str, str]]:
        rows = [("CPU", f"{self.cpu['class']} ({' '.join(self.cpu.get('flags') or []) or 'no AVX2/VNNI/AMX'})"
                 + (f"; INT8 weights {self.weight_bits}-bit for {self.cpu_target}" if self.weight_bits else ""))]
        if self.here is None:
            return [*rows, ("artifact check", self.informational or "no real images: not judged here")]
        n = self.here.comparison.images
        rows.append(("artifact check", f"this CPU, {n} held-out images: {self.here.describe()}"))
        if self.arithmetic is not None:
            gap = self.kernel_gap or 0.0
            rows.append(("kernels vs Q/DQ", f"agreement {-gap:+.2f} points against the Q/DQ arithmetic on the same "
                                            f"images (saturation: more than {SATURATION_GAP:g} below, significantly)"))
        verdict = "PASS" if self.passed else "FAIL"
        if self.informational:
            verdict = f"informational ({self.informational})"
        rows.append(("artifact gate", f"{verdict}: {self.gate}; judged on {self.judged_on}"))
        return rows + [("note", note) for note in self.notes]

    def to_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "cpu_target": self.cpu_target, "weight_bits": self.weight_bits,
                "here": self.here.to_dict() if self.here is not None else None,
                "arithmetic": self.arithmetic.to_dict() if self.arithmetic is not None else None,
                "kernel_gap": self.kernel_gap, "saturation_gap": SATURATION_GAP, "gate": self.gate,
                "judged_on": self.judged_on, "passed": self.passed, "informational": self.informational,
                "notes": self.notes}


def check_set_for(result: Any, request: Any, src: Any, say: Any) -> CheckSet | None:
    """The images the artifact is judged on: the precision step's own held-out set, else `CHECK_IMAGES` real
    images from --calib-data with FP32's logits (None without real images)."""
    from resnet_deploy.onnx_check import run_logits, session
    from resnet_deploy.precision.calibration import calibration_batch
    from resnet_deploy.precision.common import CheckSet

    if result is not None and result.check_set is not None:
        return result.check_set
    if request.calib_data is None:
        return None
    images, labels = labelled_images(request.calib_data, src.card, request.check_images or CHECK_IMAGES,
                                     request.calib_seed)
    batch, _ = calibration_batch(src.input_shape, src.card.preprocessing.input_size)
    reference = run_logits(session(src.path), images, batch=batch)
    return CheckSet(images, labels, reference, None, "images")


def labelled_images(folder: Path, card: Any, count: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """`count` images of `folder` through the card's transform, and their labels when the folder's class
    subfolders are the card's classes."""
    return folder_images(folder, card.preprocessing, count, seed, class_names=card.class_names)


def judge_here(artifact: Path, manifest: Manifest, *, model: Path, src: Any, precision: str,
               check_set: CheckSet | None, cpu_target: str | None, min_agreement: float | None, rebuild: str,
               shown_as: Path, progress: Any = None) -> ArtifactVerdict:
    """Judge the staged `artifact` on this CPU (see the module docstring), record the CPU and the self-check in
    `manifest` (the caller writes it), and raise CheckFailed when the gate fails."""
    from resnet_deploy.artifacts import open_engine
    from resnet_deploy.gates import RANDOM_INPUTS_REASON, RANDOM_WEIGHTS_REASON
    from resnet_deploy.onnx_check import arithmetic_session, run_logits, session
    from resnet_deploy.precision.common import judged
    from resnet_deploy.precision.isa import this_cpu, weight_bits_for
    from resnet_deploy.selfcheck import check_inputs, record

    cpu = this_cpu()
    bits = weight_bits_for(cpu_target) if precision == "int8" and cpu_target is not None else None
    if precision == "int8" and bits is not None:
        bits = _recorded_bits(model) or bits
    pre = src.card.preprocessing
    sc_inputs = check_inputs(pre.input_size, pre.mean, pre.std)
    foreign_target = precision == "int8" and cpu_target not in (None, "portable", cpu.cpu_class)
    with open_engine(artifact) as engine:
        static = engine.input.shape[0] if isinstance(engine.input.shape[0], int) else None
        here_sc = _infer(engine, sc_inputs, static)
        here_logits = None
        if check_set is not None:
            here_logits = _infer(engine, check_set.images, static, progress=progress)
    # The self-check's reference: what a correct machine computes (INT8: the Q/DQ arithmetic, the same anywhere).
    reference_sc = run_logits(arithmetic_session(model) if precision == "int8" else session(src.path), sc_inputs,
                              batch=static)
    reference_name = "Q/DQ arithmetic of the INT8 model" if precision == "int8" else "FP32 source model"
    # `class` is the CPU class the artifact is verified for: this machine's, or the target class when the weights
    # are for another one (judged by the arithmetic that class computes exactly): opened anywhere else, it runs
    # its self-check first.
    manifest.isa = {"class": cpu_target if foreign_target else cpu.cpu_class, "flags": list(cpu.flags),
                    "built_on": cpu.to_dict(), "verified_by": "Q/DQ arithmetic" if foreign_target else "kernels",
                    "cpu_target": cpu_target, "weight_bits": bits, "rebuild": rebuild}
    manifest.self_check = record(reference_sc, reference_sc if foreign_target else here_sc, precision=precision,
                                 reference_name=reference_name, size=pre.input_size, cpu=cpu.to_dict())
    policy_text = render_gate(build_gate_for(precision, min_agreement=min_agreement,
                                             labelled=check_set is not None and check_set.labels is not None))
    if check_set is None or here_logits is None:
        verdict = ArtifactVerdict(cpu.to_dict(), cpu_target, bits, None, None, policy_text, "nothing", True,
                                  "no real images (--calib-data) to judge the artifact on; its load check used "
                                  "random inputs")
        manifest.artifact_check = {**(manifest.artifact_check or {}), "here": verdict.to_dict()}
        return verdict
    labels = check_set.labels
    here = judged(check_set.reference, here_logits, labels)
    arithmetic = judged(check_set.reference, check_set.arithmetic, labels) if check_set.arithmetic is not None \
        else None
    informational = None
    if src.random_weights:
        informational = RANDOM_WEIGHTS_REASON
    elif check_set.data == "random":
        informational = RANDOM_INPUTS_REASON
    judged_on, subject = "this CPU's kernels", here
    notes = []
    if foreign_target and arithmetic is not None:
        judged_on, subject = (f"the Q/DQ arithmetic (the weights are for {cpu_target}; this {cpu.cpu_class} CPU's "
                              "kernels are information only)"), arithmetic
        notes.append(f"built for {cpu_target} on a {cpu.cpu_class} CPU: the artifact runs its self-check when first "
                     f"opened on a {cpu_target} CPU")
    policy = build_gate_for(precision, min_agreement=min_agreement, labelled=labels is not None)
    delta, set_aside = subject.gated_delta(policy.max_top1_drop)
    if set_aside:
        notes.append(set_aside)
    verdict_raw = judge(policy, agreement=subject.comparison.agreement, top1_delta=delta,
                        finite=subject.comparison.finite, informational=informational)
    failures = list(verdict_raw.failures)
    saturated, gap, p = False, None, None
    if check_set.arithmetic is not None:
        ref_top1 = check_set.reference.argmax(1)
        kernels_agree = here_logits.argmax(1) == ref_top1
        arithmetic_agree = check_set.arithmetic.argmax(1) == ref_top1
        saturated, gap, p = saturating(int(np.sum(arithmetic_agree & ~kernels_agree)),
                                       int(np.sum(kernels_agree & ~arithmetic_agree)), len(ref_top1))
    if saturated and not foreign_target:
        fix = ("--cpu native (7-bit weights, exact on this CPU)" if bits == 8 else
               "--target onnxruntime or openvino, whichever computes it exactly here")
        failures.append(f"this {cpu.cpu_class} CPU's integer kernels agree with FP32 on "
                        f"{here.comparison.agreement:.2f}% but the Q/DQ arithmetic of the same model on "
                        f"{arithmetic.comparison.agreement:.2f}% ({gap:.2f} points apart, more than "
                        f"{SATURATION_GAP:g}, McNemar p {p:.2g}): the kernels saturate "
                        f"({bits}-bit weights); not a calibration "
                        f"problem. Build with {fix}")
    passed = not failures or informational is not None
    verdict = ArtifactVerdict(cpu.to_dict(), cpu_target, bits, here, arithmetic, policy_text, judged_on, passed,
                              informational, notes)
    manifest.artifact_check = {**here.to_dict(), "data": check_set.data, "here": verdict.to_dict(),
                               "load_check": manifest.artifact_check}
    if not passed:
        hint = ""
        if precision == "int8" and not saturated:
            from resnet_deploy.precision.int8 import int8_remedies

            hint = " " + int8_remedies("percentile", src.path)
        raise CheckFailed(f"{shown_as}: the artifact on this CPU, {here.comparison.images} held-out images: "
                          f"{here.describe()}; " + "; ".join(failures) + f"; nothing was written.{hint}")
    return verdict


def _infer(engine: Any, images: np.ndarray, static: int | None, progress: Any = None) -> np.ndarray:
    step = static or 32
    outputs = []
    done = 0
    for chunk in batches_of(images, step, static=static is not None):
        outputs.append(np.asarray(engine.infer(np.ascontiguousarray(chunk, dtype=np.float32)), dtype=np.float32))
        done = min(len(images), done + len(chunk))
        if progress is not None:
            progress("check artifact on this CPU", done, len(images))
    return np.concatenate(outputs)[: len(images)]


def _recorded_bits(model: Path) -> int | None:
    """The weight bits the INT8 model records (a model fine-tuned elsewhere may carry its own)."""
    import json

    from resnet_deploy.artifacts import QUANTIZATION_KEY, Artifact

    try:
        data = json.loads(Artifact(model).metadata.get(QUANTIZATION_KEY) or "{}")
    except (json.JSONDecodeError, ValueError):
        return None
    bits = data.get("weight_bits") if isinstance(data, dict) else None
    return bits if isinstance(bits, int) else None
