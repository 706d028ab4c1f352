"""The end of a finetune-int8 run: export the fine-tuned module to Q/DQ ONNX, check the file computes what the
module computes, judge INT8 against the FP32 teacher with the build gate, and only then write the artifact with
its card, lineage and verification record."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from resnet_deploy.atomic import atomic_path
from resnet_deploy.errors import CheckFailed

if TYPE_CHECKING:
    from trainer.qat_config import FinetuneResult


class FinishingRun(Protocol):
    """What the end needs of a run (`trainer.qat._Finetune`); a protocol so this module need not import it."""

    cfg: Any
    loaded: Any
    teacher: torch.nn.Module
    ctx: Any
    data: Any
    bits: int
    cpu_target: str
    card_sha256: str

    def final_module(self) -> torch.nn.Module: ...

    def lineage(self, result: FinetuneResult) -> dict[str, Any]: ...


def finish(run: FinishingRun, result: FinetuneResult) -> None:
    """Export, check the Q/DQ arithmetic against the module, judge INT8 vs FP32, then write `output`."""
    import onnx

    from resnet_deploy.artifacts import VERIFICATION_KEY
    from resnet_deploy.compare import compare_logits
    from resnet_deploy.data import open_dataset, sample_labelled
    from resnet_deploy.gates import build_gate_for, judge, render_gate
    from resnet_deploy.onnx_check import arithmetic_session, run_logits
    from resnet_deploy.precision.qat_export import check_qdq, export_qdq

    cfg, card = run.cfg, run.loaded.card
    module = run.final_module()
    test = open_dataset(run.data.root, split=run.data.test_split)
    images, labels = sample_labelled(test, card.preprocessing, min(cfg.check_images, len(test)), cfg.seed)
    module.eval()
    with torch.no_grad():
        teacher = torch.cat([run.teacher(torch.from_numpy(images[i:i + 128]).to(run.ctx.device)).float().cpu()
                             for i in range(0, len(images), 128)]).numpy()
    lineage = run.lineage(result)
    quantization = {
        "format": "QDQ", "weights": f"int8 ({run.bits}-bit range), per-channel (output channel), symmetric, "
                                    "each channel clipped where its rounding + clipping error is least",
        "weight_bits": run.bits, "cpu_target": run.cpu_target,
        "activations": "int8, per-tensor, symmetric (zero point 0)", "bias": "float", "remainder": "fp32",
        "logits": "int8" if cfg.quantize_logits else "float (the Gemm's inputs int8, its output float)",
        "tool": f"torch {torch.__version__} fake-quant export (finetune-int8)", "float_by_rule": [],
        "qat": lineage,
    }
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-finetune-", dir=cfg.output.parent) as tmp:
        staged = Path(tmp) / cfg.output.name
        export_qdq(module, staged, card=card, props=card_props(run, lineage), quantization=quantization)
        check = check_qdq(staged, module, images)
        result.qdq_check = check.to_dict()
        if not check.passed:
            raise CheckFailed(f"{cfg.output}: the exported Q/DQ model does not compute what the fine-tuned "
                              f"module computes ({check.agreement:.2f}% top-1 agreement, max |Δ logit| "
                              f"{check.max_abs_logit_diff:.3g} on {check.images} images); nothing was written")
        int8 = run_logits(arithmetic_session(staged), images, batch=64)
        comparison = compare_logits(teacher, int8)
        result.vs_fp32 = comparison.to_dict()
        result.fp32_top1 = 100.0 * float(np.mean(teacher.argmax(1) == labels))
        result.int8_top1 = 100.0 * float(np.mean(int8.argmax(1) == labels))
        gate = build_gate_for("int8", min_agreement=cfg.min_agreement)
        result.gate = render_gate(gate)
        random_weights = bool(card.lineage.get("random_weights"))
        if not random_weights and not judge(gate, agreement=comparison.agreement,
                                            finite=comparison.finite).passed:
            raise CheckFailed(
                f"{cfg.output}: after {result.iterations} iterations the INT8 model agrees with FP32 on "
                f"{comparison.agreement:.2f}% of {len(images)} held-out images, below the build gate: "
                f"{render_gate(gate)}; nothing was written ({cfg.state_path} is kept). Try more --iters "
                "(a new run: delete the state), or lower --min-agreement if this difference is acceptable")
        verification = {"reference": "FP32 card in PyTorch", "data": f"held-out images ({run.data.test_split})",
                        **comparison.to_dict(), "fp32_top1": result.fp32_top1, "int8_top1": result.int8_top1,
                        "qdq_vs_module": check.to_dict()}
        model = onnx.load(str(staged))
        entry = model.metadata_props.add()
        entry.key, entry.value = VERIFICATION_KEY, json.dumps(verification)
        with atomic_path(cfg.output) as final:
            onnx.save(model, str(final))
    result.output = cfg.output


def card_props(run: FinishingRun, lineage: dict[str, Any]) -> dict[str, str]:
    """The card metadata of an exported model (export.card_metadata_props), the card's lineage extended."""
    import onnx

    from resnet_deploy.card import stamp_lineage
    from resnet_deploy.export import card_metadata_props

    card = stamp_lineage(run.loaded.card, int8_finetune=lineage)
    return {**card_metadata_props(card, source_sha256=run.card_sha256, batch=None),
            "random_weights": "true" if card.lineage.get("random_weights") else "false",
            "torch_version": torch.__version__, "onnx_version": onnx.__version__}
