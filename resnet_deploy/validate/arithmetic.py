"""The Q/DQ arithmetic beside a CPU INT8 artifact: what a correct kernel computes, to tell saturation from calibration.

A CPU INT8 artifact runs this machine's integer kernels; on a CPU without VNNI those saturate unless the
weights are 7-bit (`precision/isa.py`). The Q/DQ model the artifact was built from, run by ONNX
Runtime with graph optimizations off, computes the quantization arithmetic itself, the same on every
CPU. `validate` runs it on the same batches and reports both agreements; the kernels trailing the
arithmetic by more than `gates.SATURATION_GAP` points is reported as saturation, not as calibration.

The arithmetic model: an ONNX Runtime artifact is its own (its Q/DQ nodes are all there, fused only
when a session optimizes them); an OpenVINO IR's is the INT8 ONNX its manifest names, when that file is
still there with the recorded hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy import registry
from resnet_deploy.gates import SATURATION_GAP, saturating


@dataclass
class Arithmetic:
    """The Q/DQ arithmetic of one artifact's model, tallied against the reference like the artifact itself."""

    model: Path
    session: Any
    images: int = 0
    agree: int = 0  # top-1 equal to the reference's
    correct: int = 0  # top-1 equal to the label
    only_arithmetic: int = 0  # images where the arithmetic agrees with the reference and the kernels do not
    only_kernels: int = 0
    notes: list[str] = field(default_factory=list)

    def update(self, x: np.ndarray, reference_top1: np.ndarray, kernel_top1: np.ndarray, labels: np.ndarray) -> None:
        from resnet_deploy.onnx_check import run_logits

        logits = run_logits(self.session, x)
        top1 = logits.argmax(1)
        agree, kernels = top1 == reference_top1, kernel_top1 == reference_top1
        self.images += len(top1)
        self.agree += int(agree.sum())
        self.correct += int((top1 == labels).sum())
        self.only_arithmetic += int((agree & ~kernels).sum())
        self.only_kernels += int((kernels & ~agree).sum())

    @property
    def agreement(self) -> float:
        return 100.0 * self.agree / self.images if self.images else float("nan")

    @property
    def top1(self) -> float:
        return 100.0 * self.correct / self.images if self.images else float("nan")

    def result(self, kernel_agreement: float) -> dict[str, Any]:
        saturated, gap, p = saturating(self.only_arithmetic, self.only_kernels, self.images)
        return {"model": str(self.model), "agreement": self.agreement, "top1": self.top1, "kernel_gap": gap,
                "kernel_gap_p": p, "saturation_gap": SATURATION_GAP, "saturating": saturated}


def arithmetic_for(artifact: Any, precision: str, device: str) -> Arithmetic | None:
    """The arithmetic companion of a CPU INT8 artifact (`artifacts.Artifact`), or None where there is none."""
    from resnet_deploy.onnx_check import arithmetic_session

    spec = registry.backend(artifact.backend) if artifact.backend in registry.backend_names() else None
    # the backends judged on this CPU have an ONNX to replay: the artifact itself, or the one it was built from
    if precision != "int8" or device != "cpu" or spec is None or not spec.verified_on_cpu:
        return None
    model = artifact.path if not spec.keeps_precision_onnx else _source_of(artifact)
    if model is None:
        return None
    return Arithmetic(model, arithmetic_session(model))


def _source_of(artifact: Any) -> Path | None:
    """The INT8 ONNX an IR was built from, where it still is with the hash its manifest recorded."""
    from resnet_deploy.atomic import sha256_file

    source = (artifact.manifest_dict or {}).get("source_onnx") or {}
    if not isinstance(source, dict) or not isinstance(source.get("path"), str):
        return None
    recorded = Path(source["path"])
    for candidate in (recorded, artifact.path.parent / recorded.name):
        if candidate.is_file() and sha256_file(candidate) == source.get("sha256"):
            return candidate
    return None


def saturation_failure(arithmetic: dict[str, Any], kernel_agreement: float) -> str | None:
    """The failure line when this CPU's kernels trail the arithmetic by more than the allowed gap."""
    if not arithmetic.get("saturating"):
        return None
    from resnet_deploy.precision.isa import this_cpu

    return (f"this {this_cpu().cpu_class} CPU's integer kernels agree with the reference on {kernel_agreement:.2f}%, "
            f"the Q/DQ arithmetic of the same model on {arithmetic['agreement']:.2f}% ({arithmetic['kernel_gap']:.2f} "
            f"points apart, more than {SATURATION_GAP:g}): the kernels saturate, it is not the calibration; rebuild "
            "with build-engine --cpu native (or --cpu portable)")
