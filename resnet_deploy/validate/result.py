"""What `validate` returns: the data set it read, one row per artifact, and the whole result, as JSON.

The names in `to_dict` are the documented `validate --json` contract (DESIGN.md); numbers JSON cannot hold
(NaN, inf) become null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from resnet_deploy.confidence import SIGNIFICANCE
from resnet_deploy.gates import Gate

SKIPPED_PATHS_KEPT = 100  # the JSON/report lists this many skipped files, then counts the rest


@dataclass
class DatasetSummary:
    path: str
    kind: str
    split: str | None
    images: int  # evaluated (after --limit, without skipped files)
    available: int  # in the data set before --limit
    limit: int | None
    classes: int
    class_names: list[str]
    skipped: int = 0
    skipped_files: list[dict[str, str]] = field(default_factory=list)  # first SKIPPED_PATHS_KEPT: path, reason

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "kind": self.kind, "split": self.split, "images": self.images,
            "available": self.available, "limit": self.limit, "classes": self.classes,
            "class_names": self.class_names, "skipped": self.skipped, "skipped_files": self.skipped_files,
        }


@dataclass
class ArtifactResult:
    """One row of the table. Parity fields are None for the ensemble row (it has no logits)."""

    artifact: str
    backend: str
    precision: str
    device: str
    images: int
    top1: float
    top5: float
    images_per_s: float | None
    is_reference: bool
    top1_delta: float
    top5_delta: float
    agreement: float
    top5_overlap: float
    max_abs_logit_diff: float | None
    mean_abs_logit_diff: float | None
    cosine_similarity: float | None
    min_cosine_similarity: float | None
    nonfinite: int
    gate: Gate | None  # None: not gated (the ensemble row)
    failures: list[str]
    transform: str
    lineage: dict[str, Any] = field(default_factory=dict)
    top1_ci: tuple[float, float] | None = None  # 95 % Wilson interval, percent
    agreement_ci: tuple[float, float] | None = None  # 95 % Wilson interval, percent
    top1_delta_ci: tuple[float, float] | None = None  # 95 % paired (Newcombe) interval, points
    top1_delta_p: float | None = None  # McNemar's exact test on the discordant pairs
    notes: list[str] = field(default_factory=list)  # informational checks (random weights) and why
    # CPU INT8: the Q/DQ arithmetic of the same model on the same images (agreement, top1, kernel_gap)
    arithmetic: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact, "backend": self.backend, "precision": self.precision, "device": self.device,
            "images": self.images, "top1": _finite(self.top1), "top5": _finite(self.top5),
            "top1_delta": _finite(self.top1_delta), "top5_delta": _finite(self.top5_delta),
            "agreement": _finite(self.agreement), "top5_overlap": _finite(self.top5_overlap),
            "max_abs_logit_diff": _finite(self.max_abs_logit_diff),
            "mean_abs_logit_diff": _finite(self.mean_abs_logit_diff),
            "cosine_similarity": _finite(self.cosine_similarity),
            "min_cosine_similarity": _finite(self.min_cosine_similarity),
            "images_per_s": _finite(self.images_per_s), "reference": self.is_reference,
            "nonfinite_outputs": self.nonfinite, "gate": self.gate.to_dict() if self.gate else None,
            "passed": self.passed, "failures": self.failures, "transform": self.transform, "lineage": self.lineage,
            "top1_ci": _interval(self.top1_ci), "agreement_ci": _interval(self.agreement_ci),
            "top1_delta_ci": _interval(self.top1_delta_ci), "top1_delta_p": _finite(self.top1_delta_p),
            "top1_delta_significant": None if self.top1_delta_p is None else self.top1_delta_p < SIGNIFICANCE,
            "notes": self.notes,
            "arithmetic": {k: _finite(v) if isinstance(v, float) else v for k, v in self.arithmetic.items()}
            if self.arithmetic else None,
        }


@dataclass
class ValidationResult:
    dataset: DatasetSummary
    results: list[ArtifactResult]
    reference: str
    ten_crop: bool
    seconds: float
    workers: int
    batch_size: int

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[ArtifactResult]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "dataset": self.dataset.to_dict(),
            "reference": self.reference,
            "ten_crop": self.ten_crop,
            "batch_size": self.batch_size,
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
            "results": [r.to_dict() for r in self.results],
        }


def _interval(value: tuple[float, float] | None) -> list[float | None] | None:
    return None if value is None else [_finite(value[0]), _finite(value[1])]


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: a missing or non-finite number becomes null."""
    return None if value is None or not math.isfinite(value) else float(value)
