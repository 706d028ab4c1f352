"""What a build made and how each step was checked (`BuildReport`), as table rows and as JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resnet_deploy.foreign.graph import CleanReport
    from resnet_deploy.precision import PrecisionResult
    from resnet_deploy.targets.base import BuildResult


@dataclass(kw_only=True)
class BuildReport:
    target: str
    target_reason: str
    source: Path
    source_sha256: str
    exported: bool
    precision: str
    fp16_remainder: bool = False
    precision_onnx: Path | None = None  # kept beside the artifact (None: FP32, or ONNX Runtime, where it is temporary)
    precision_result: PrecisionResult | None = None
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
