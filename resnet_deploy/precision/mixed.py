"""Mixed precision to an accuracy budget: keep the most sensitive nodes out of INT8 until the gate holds.

`Quantizer` (`qdq.py`) makes the Q/DQ model from one set of cached ranges with any nodes excluded (no
re-calibration). `search_mixed` splits the held-out images in two interleaved halves: it ranks the
nodes on the first (`sensitivity.score_layers`), excludes them greedily in that order, re-checking
after each step, until the build gate is met there or the cap is reached, and confirms the final
model on the second half, which the search never saw: a model that only fits its own check fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.compare import LogitComparison
from resnet_deploy.gates import Gate, judge, render_gate
from resnet_deploy.onnx_check import arithmetic_session as session
from resnet_deploy.onnx_check import run_logits
from resnet_deploy.precision.qdq import Quantizer

DEFAULT_MAX_FALLBACK_LAYERS = 8
RANK_IMAGES = 256  # images the sensitivity ranking runs on: its mean |Δ logit| is steady long before a flip count


@dataclass
class MixedPrecision:
    path: Path  # the chosen model (in the temporary folder until written)
    passed: bool
    failure: str | None
    full_int8_agreement: float  # on all the held-out images
    selection_images: int
    confirmation_images: int
    remainder: str  # precision of the nodes kept out of INT8: fp32 or fp16
    steps: list[dict[str, Any]]  # one per node taken out: node, block, agreement on the selection half
    kept_out: list[dict[str, str]]  # the final list: node, block, op_type
    ranking: list[dict[str, Any]]  # the sensitivity ranking on the selection half, most sensitive first
    confirmation: LogitComparison

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failure": self.failure, "full_int8_agreement": self.full_int8_agreement,
                "selection_images": self.selection_images, "confirmation_images": self.confirmation_images,
                "remainder": self.remainder, "steps": self.steps, "kept_out": self.kept_out,
                "ranking": self.ranking, "confirmation": self.confirmation.to_dict()}


def search_mixed(quantizer: Quantizer, src: Any, reference: np.ndarray, images: np.ndarray,
                 full: LogitComparison, gate: Gate, *, max_fallback_layers: int, batch: int,
                 progress: Any = None, labels: np.ndarray | None = None) -> MixedPrecision:
    """Greedy search for the fewest nodes out of INT8 that meet `gate` (see the module docstring). Every model is
    run as its Q/DQ arithmetic (optimizations off); the ranking uses a continuous measure (mean |Δ logit|) on at
    most `RANK_IMAGES` of the selection half, the steps and the confirmation judge the whole halves."""
    import onnx

    from resnet_deploy.precision.common import judged
    from resnet_deploy.precision.sensitivity import block_name, candidate_nodes, rank, score_layers

    selection, confirmation = images[0::2], images[1::2]
    ref_selection, ref_confirmation = reference[0::2], reference[1::2]
    lab_selection = labels[0::2] if labels is not None else None
    lab_confirmation = labels[1::2] if labels is not None else None
    full_path = quantizer.build([])
    ranking_images = selection[:RANK_IMAGES]
    full_selection = run_logits(session(full_path), ranking_images, batch=batch)
    source_nodes = {n.name: n for n in src.model.graph.node}
    nodes = [(n.name, n.op_type, block_name(n, source_nodes)) for n in candidate_nodes(onnx.load(str(full_path)))]
    ranked = rank(score_layers(quantizer.build, nodes, ref_selection[:RANK_IMAGES], full_selection, ranking_images,
                               batch=batch, progress=progress, session=session))
    excluded: list[str] = []
    steps: list[dict[str, Any]] = []
    met = False
    path = full_path
    for layer in ranked[:max_fallback_layers]:
        excluded.append(layer.node)
        path = quantizer.build(excluded)
        judged_step = judged(ref_selection, run_logits(session(path), selection, batch=batch), lab_selection)
        step = judged_step.comparison
        steps.append({"node": layer.node, "block": layer.block, "op_type": layer.op_type,
                      "agreement": step.agreement, "mean_abs_logit_diff": step.mean_abs_logit_diff,
                      "top1_delta": judged_step.top1_delta})
        if progress is not None:
            progress("mixed precision", len(excluded), min(max_fallback_layers, len(ranked)))
        delta = judged_step.gated_delta(gate.max_top1_drop)[0]
        if step.finite and judge(gate, agreement=step.agreement, top1_delta=delta).passed:
            met = True
            break
    judged_check = judged(ref_confirmation, run_logits(session(path), confirmation, batch=batch), lab_confirmation)
    checked = judged_check.comparison
    failure = None
    if not met:
        reached = steps[-1]["agreement"] if steps else full.agreement
        failure = (f"full INT8 agrees with FP32 on {full.agreement:.2f}% of {len(images)} held-out images; with the "
                   f"{len(steps)} most sensitive layer(s) out of INT8 ({', '.join(s['block'] for s in steps)}) "
                   f"it reached {reached:.2f}% on the {len(selection)} selection images, still below the build "
                   f"gate: {render_gate(gate)} (--max-fallback-layers {max_fallback_layers})")
    elif not (checked.finite and judge(gate, agreement=checked.agreement,
                                       top1_delta=judged_check.gated_delta(gate.max_top1_drop)[0]).passed):
        failure = (f"with {len(steps)} layer(s) out of INT8 the model met the build gate on the {len(selection)} "
                   f"selection images but not on the {len(confirmation)} confirmation images "
                   f"({judged_check.describe()}): {render_gate(gate)}")
    by_node = {layer.node: layer for layer in ranked}
    return MixedPrecision(
        path=path, passed=failure is None, failure=failure, full_int8_agreement=full.agreement,
        selection_images=len(selection), confirmation_images=len(confirmation),
        remainder="fp16" if quantizer.fp16_remainder else "fp32", steps=steps,
        kept_out=[{"node": n, "block": by_node[n].block, "op_type": by_node[n].op_type} for n in excluded],
        ranking=[{"node": s.node, "block": s.block, "mean_abs_logit_diff": s.mean_abs_logit_diff,
                  "delta_agreement": s.delta_agreement} for s in ranked[:max(2 * max_fallback_layers, 10)]],
        confirmation=checked)
