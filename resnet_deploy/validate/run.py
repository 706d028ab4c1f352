"""Top-1/top-5 of every artifact on the same real images, and how far each strays from a reference.

Each image is decoded once and transformed once per distinct preprocessing contract (artifacts
whose cards agree share one tensor); every artifact then sees exactly the same batches, so the
differences in the table come from the backends alone. Decoding runs in DataLoader worker
processes while the main process runs inference.

Deltas are signed, artifact minus reference, in percentage points: a negative `top1_delta` is a drop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnet_deploy.confidence import mcnemar_exact_p, paired_delta_interval, wilson_percent
from resnet_deploy.errors import UsageError
from resnet_deploy.gates import RANDOM_WEIGHTS_REASON, judge
from resnet_deploy.samples import batches_of
from resnet_deploy.validate.arithmetic import arithmetic_for, saturation_failure
from resnet_deploy.validate.parity import (
    AccuracyTally,
    ParityTally,
    finite_rows,
    gate_for,
    softmax,
    topk_indices,
)
from resnet_deploy.validate.result import SKIPPED_PATHS_KEPT, ArtifactResult, DatasetSummary, ValidationResult

if TYPE_CHECKING:
    from resnet_deploy.artifacts import Artifact
    from resnet_deploy.card import ModelCard
    from resnet_deploy.foreign.card import CardFlags

# The result schema lives in validate/result.py; importers of these names from here keep working.
__all__ = ["ArtifactResult", "DatasetSummary", "ValidateOptions", "ValidationResult", "choose_reference", "validate"]

TOPK = 5


@dataclass
class ValidateOptions:
    split: str | None = None
    limit: int | None = None
    batch_size: int = 64
    workers: int | None = None  # None: validate.views.default_workers()
    device: str = "cpu"
    ten_crop: bool = False
    ensemble: bool = False
    max_top1_drop: float | None = None  # None: by precision (parity.DEFAULT_GATES)
    min_agreement: float | None = None
    skip_bad: bool = False
    card_flags: CardFlags | None = None  # preprocessing of the ONNX models without a model card



@dataclass
class _Artifact:
    """An artifact being evaluated: its engine, which transformed view it reads, and its tallies."""

    path: Path
    label: str
    card: Any
    engine: Any
    view: int
    accuracy: AccuracyTally
    parity: ParityTally
    lineage: dict[str, Any]
    arithmetic: Any = None  # validate.arithmetic.Arithmetic: a CPU INT8 artifact's Q/DQ arithmetic, same batches


def choose_reference(artifacts: Sequence[Path], reference: Path | None) -> tuple[list[Path], int]:
    """The artifact list (the reference prepended when it is not among them) and the reference's index:
    the given one, else the first PyTorch artifact, else the first."""
    from resnet_deploy.artifacts import backend_for

    paths = list(artifacts)
    if reference is not None:
        for i, path in enumerate(paths):
            if _same_file(path, reference):
                return paths, i
        return [reference, *paths], 0
    for i, path in enumerate(paths):
        if backend_for(path) == "torch":
            return paths, i
    return paths, 0


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def artifact_lineage(artifact: Artifact) -> dict[str, Any]:
    """Where an artifact came from: its hash, the card's lineage, its manifest and ONNX metadata (read once)."""
    from resnet_deploy.atomic import sha256_file
    from resnet_deploy.metadata_keys import CARD_KEY

    card = artifact.card
    lineage: dict[str, Any] = {"sha256": sha256_file(artifact.path), "arch": card.arch,
                               "card_lineage": dict(card.lineage)}
    manifest = artifact.manifest_dict
    if manifest:
        lineage["manifest"] = {k: v for k, v in manifest.items() if k != "card"}
    if artifact.backend == "onnxruntime":
        lineage["onnx_metadata"] = {k: v for k, v in artifact.metadata.items() if k != CARD_KEY}
    return lineage


def artifact_card_or_flags(artifact: Artifact, flags: CardFlags | None) -> ModelCard:
    """The artifact's card; an ONNX model without one gets its card from the preprocessing flags (refused,
    naming them, when they are missing) and keeps it, so its lineage reads like any other's."""
    from resnet_deploy.metadata_keys import CARD_KEY

    artifact.require_file()
    if artifact.backend != "onnxruntime" or artifact.metadata.get(CARD_KEY):
        return artifact.card
    from resnet_deploy.foreign.card import card_from_flags
    from resnet_deploy.foreign.graph import load_onnx

    artifact.card = card_from_flags(load_onnx(artifact.path), artifact.path, flags)  # type: ignore[misc]
    return artifact.card


def _display_labels(paths: Sequence[Path]) -> list[str]:
    """File names where they are unique, else the paths as given."""
    names = [p.name for p in paths]
    return [p.name if names.count(p.name) == 1 else str(p) for p in paths]


def _run_engine(engine: Any, batch: np.ndarray) -> np.ndarray:
    """Infer a batch; an engine with a fixed batch size gets it in chunks (`samples.batches_of`: the last one
    filled by repetition, its extra outputs dropped)."""
    fixed = engine.input.shape[0]
    if fixed is None or fixed == len(batch):
        return engine.infer(batch)
    chunks = batches_of(batch, fixed, static=True)
    return np.concatenate([engine.infer(np.ascontiguousarray(chunk)) for chunk in chunks])[: len(batch)]


def validate(
    artifacts: Sequence[str | Path],
    data: str | Path,
    *,
    reference: str | Path | None = None,
    options: ValidateOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ValidationResult:
    """Evaluate every artifact on the same images. `progress(done, total)` is called after each batch.

    Raises UsageError for bad input (a missing file, classes that disagree with a card, a corrupt image
    without `skip_bad`); gate failures are recorded in the result, not raised."""
    from resnet_deploy.artifacts import Artifact
    from resnet_deploy.data import BadImageError, check_classes, eval_transform, open_dataset, stratified_indices
    from resnet_deploy.validate.views import TenCrop, default_workers, iterate_views, ten_crop_problem

    options = options or ValidateOptions()
    if not artifacts:
        raise UsageError("name at least one artifact to validate")
    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.limit is not None and options.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {options.limit}")
    if options.workers is not None and options.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {options.workers}")
    paths, ref_index = choose_reference([Path(a) for a in artifacts], Path(reference) if reference else None)
    handles = [Artifact(path) for path in paths]  # an unknown suffix is refused before anything is loaded
    cards = [artifact_card_or_flags(handle, options.card_flags) for handle in handles]  # before any decoding

    dataset = open_dataset(data, options.split)
    available = len(dataset)
    if options.limit is not None and options.limit < available:
        # Spread over classes: a plain prefix of a class-sorted folder would hold one class only.
        dataset = dataset.subset(stratified_indices(dataset.labels, options.limit))

    for path, card in zip(paths, cards, strict=True):
        check_classes(dataset, card.class_names, str(path))
        if options.ten_crop and (problem := ten_crop_problem(card.preprocessing)):
            raise UsageError(f"--ten-crop: {path}: {problem}")

    # One transform per distinct preprocessing contract; artifacts that agree share the tensor.
    views: dict[Any, int] = {}
    for card in cards:
        views.setdefault(card.preprocessing, len(views))
    make = TenCrop if options.ten_crop else eval_transform
    transforms = [make(pre) for pre in views]

    k = min(TOPK, dataset.num_classes)
    labels = _display_labels(paths)
    runs: list[_Artifact] = []
    try:
        for handle, label, card in zip(handles, labels, cards, strict=True):
            engine = handle.open_engine(device=options.device)
            runs.append(_Artifact(handle.path, label, card, engine, views[card.preprocessing], AccuracyTally(k),
                                  ParityTally(k), artifact_lineage(handle),
                                  None if options.ten_crop else arithmetic_for(handle, engine.precision,
                                                                               engine.device)))
        ensemble = AccuracyTally(k) if options.ensemble and len(runs) > 1 else None
        ensemble_parity = ParityTally(k) if ensemble else None
        workers = default_workers() if options.workers is None else options.workers
        skipped: list[tuple[str, str]] = []
        done = 0
        start = time.perf_counter()
        loader = iterate_views(dataset, transforms, batch_size=options.batch_size, workers=workers)
        for batch in loader:
            for path, reason in batch.bad:
                if not options.skip_bad:
                    raise BadImageError(path, reason)
                skipped.append((path, reason))
            if len(batch.labels):
                _evaluate_batch(batch, runs, ref_index, ensemble, ensemble_parity, options.ten_crop,
                                dataset.num_classes)
            done += len(batch.labels) + len(batch.bad)
            if progress is not None:
                progress(done, len(dataset))
        seconds = time.perf_counter() - start
    finally:
        for run in runs:
            run.engine.close()

    evaluated = len(dataset) - len(skipped)
    if evaluated == 0:
        raise UsageError(f"{dataset.root}: none of the {len(dataset)} images could be read")
    summary = DatasetSummary(
        path=str(dataset.root), kind=dataset.kind, split=dataset.split, images=evaluated, available=available,
        limit=options.limit, classes=dataset.num_classes, class_names=list(dataset.class_names),
        skipped=len(skipped),
        skipped_files=[{"path": p, "reason": r} for p, r in skipped[:SKIPPED_PATHS_KEPT]],
    )
    reference_run = runs[ref_index]
    results = [_artifact_result(run, reference_run, options) for run in runs]
    if ensemble is not None and ensemble_parity is not None:
        results.append(_ensemble_result(runs, ensemble, ensemble_parity, reference_run))
    return ValidationResult(summary, results, str(reference_run.path), options.ten_crop, seconds, workers,
                            options.batch_size)


def _evaluate_batch(
    batch: Any,
    runs: list[_Artifact],
    ref_index: int,
    ensemble: AccuracyTally | None,
    ensemble_parity: ParityTally | None,
    ten_crop: bool,
    num_classes: int,
) -> None:
    """Run one batch through every artifact (reference first) and update all tallies."""
    labels = batch.labels.numpy()
    n = len(labels)
    order = [ref_index] + [i for i in range(len(runs)) if i != ref_index]
    reference_outputs: np.ndarray | None = None
    reference_topk: np.ndarray | None = None
    reference_correct: np.ndarray | None = None
    probability_sum: np.ndarray | None = None
    for i in order:
        run = runs[i]
        x = batch.views[run.view].numpy()
        if ten_crop:
            x = x.reshape(-1, *x.shape[2:])  # (N, 10, C, H, W) → (N·10, C, H, W)
        run.engine.synchronize()
        tick = time.perf_counter()
        outputs = _run_engine(run.engine, np.ascontiguousarray(x, dtype=np.float32))
        run.engine.synchronize()
        run.accuracy.seconds += time.perf_counter() - tick
        if outputs.ndim != 2 or outputs.shape[1] != num_classes:
            raise UsageError(
                f"{run.path}: the model outputs shape {tuple(outputs.shape)}, expected (batch, {num_classes}) "
                "for the data set's classes; its card and its graph disagree"
            )
        per_crop = outputs.reshape(n, -1, num_classes)
        finite = finite_rows(per_crop)
        # Ten-crop averages softmax over the crops (the paper's protocol); one view ranks by the logits.
        probabilities = softmax(per_crop).mean(axis=1)
        scores = probabilities if ten_crop else outputs
        topk = topk_indices(np.where(finite[:, None], scores, -np.inf), run.accuracy.k)
        run.accuracy.update(topk, labels, finite)
        correct = (topk[:, 0] == labels) & finite
        if i == ref_index:
            reference_outputs, reference_topk, reference_correct = outputs, topk, correct
        else:
            assert reference_outputs is not None and reference_topk is not None and reference_correct is not None
            run.parity.update_correct(reference_correct, correct)
            run.parity.update_predictions(reference_topk, topk)
            run.parity.update_outputs(reference_outputs, outputs)
            if run.arithmetic is not None:
                run.arithmetic.update(np.ascontiguousarray(x, dtype=np.float32), reference_topk[:, 0], topk[:, 0],
                                      labels)
        if ensemble is not None:
            probability_sum = probabilities if probability_sum is None else probability_sum + probabilities
    if ensemble is not None and ensemble_parity is not None and probability_sum is not None:
        finite = finite_rows(probability_sum)
        topk = topk_indices(np.where(finite[:, None], probability_sum, -np.inf), ensemble.k)
        ensemble.update(topk, labels, finite)
        assert reference_topk is not None
        ensemble_parity.update_predictions(reference_topk, topk)


def _artifact_result(run: _Artifact, reference: _Artifact, options: ValidateOptions) -> ArtifactResult:
    is_reference = run is reference
    acc, ref = run.accuracy, reference.accuracy
    precision = run.engine.precision
    gate = gate_for(precision, max_top1_drop=options.max_top1_drop, min_agreement=options.min_agreement)
    top1_delta = acc.top1 - ref.top1
    agreement = 100.0 if is_reference else run.parity.agreement
    random_weights = bool(run.card.lineage.get("random_weights") or reference.card.lineage.get("random_weights"))
    judgement = judge(gate, agreement=agreement, top1_delta=top1_delta,
                      informational=RANDOM_WEIGHTS_REASON if random_weights else None)
    failures = [] if is_reference or judgement.informational else list(judgement.failures)
    arithmetic = run.arithmetic.result(agreement) if run.arithmetic is not None and not is_reference else None
    if arithmetic is not None and not judgement.informational \
            and (saturated := saturation_failure(arithmetic, agreement)) is not None:
        failures.append(saturated)
    if acc.nonfinite:
        failures.insert(0, f"NaN or Inf in the output for {acc.nonfinite} of {acc.images} images "
                           "(counted as wrong); the artifact is numerically broken")
    parity = run.parity
    pre = run.card.preprocessing
    describe = (f"ten-crop: 4 corners + centre ({pre.input_size} px) of the {pre.resize_size}-px resize and their "
                f"mirror images, softmax averaged; {pre.describe()}" if options.ten_crop else pre.describe())
    return ArtifactResult(
        artifact=str(run.path), backend=run.engine.name, precision=precision, device=run.engine.device,
        images=acc.images, top1=acc.top1, top5=acc.topk, images_per_s=acc.images_per_s, is_reference=is_reference,
        top1_delta=top1_delta, top5_delta=acc.topk - ref.topk, agreement=agreement,
        top5_overlap=100.0 if is_reference else parity.topk_overlap,
        max_abs_logit_diff=0.0 if is_reference else parity.max_abs_diff,
        mean_abs_logit_diff=0.0 if is_reference else parity.mean_abs,
        cosine_similarity=1.0 if is_reference else parity.cosine,
        min_cosine_similarity=1.0 if is_reference else (parity.cosine_min if parity.rows else None),
        nonfinite=acc.nonfinite, gate=gate, failures=failures, transform=describe, lineage=run.lineage,
        **_intervals(acc, parity, is_reference),
        notes=[] if is_reference or not judgement.informational else
        [f"{judgement.informational}: {f}" for f in judgement.failures] or [judgement.informational],
        arithmetic=arithmetic,
    )


def _intervals(acc: AccuracyTally, parity: ParityTally, is_reference: bool) -> dict[str, Any]:
    """95 % intervals: Wilson for top-1 and agreement, Newcombe for the paired Δtop-1, McNemar's exact p."""
    fields: dict[str, Any] = {"top1_ci": wilson_percent(acc.top1_correct, acc.images)}
    if not is_reference and parity.images:
        counts = parity.paired_counts()
        low, high = paired_delta_interval(counts)
        fields.update(agreement_ci=wilson_percent(parity.agree, parity.images),
                      top1_delta_ci=(100.0 * low, 100.0 * high),
                      top1_delta_p=mcnemar_exact_p(counts.only_candidate, counts.only_reference))
    return fields


def _ensemble_result(runs: list[_Artifact], tally: AccuracyTally, parity: ParityTally,
                     reference: _Artifact) -> ArtifactResult:
    """The softmax average of every artifact, as one extra row; informative, so not gated."""
    failures = []
    if tally.nonfinite:
        failures.append(f"NaN or Inf in the averaged softmax for {tally.nonfinite} of {tally.images} images "
                        "(an artifact in the ensemble is numerically broken)")
    precisions = sorted({run.engine.precision for run in runs})
    return ArtifactResult(
        artifact=f"ensemble of {len(runs)}", backend="ensemble", precision="+".join(precisions), device="-",
        images=tally.images, top1=tally.top1, top5=tally.topk, images_per_s=None, is_reference=False,
        top1_delta=tally.top1 - reference.accuracy.top1, top5_delta=tally.topk - reference.accuracy.topk,
        agreement=parity.agreement, top5_overlap=parity.topk_overlap, max_abs_logit_diff=None,
        mean_abs_logit_diff=None, cosine_similarity=None, min_cosine_similarity=None, nonfinite=tally.nonfinite,
        gate=None, failures=failures, transform="mean softmax of: " + ", ".join(run.label for run in runs),
        lineage={"members": [str(run.path) for run in runs]},
    )
