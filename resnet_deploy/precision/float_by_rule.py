"""Nodes INT8 never quantizes, whatever the calibration: the attention and normalization of transformer blocks.

ONNX Runtime's `quantize_static` quantizes every op it has a kernel for, LayerNormalization, Softmax, the
residual Add and a MatMul of two activations included. In a vision transformer that puts per-tensor INT8 on
both operands of QKᵀ, on the softmax probabilities and on the residual stream LayerNorm reads: a small ViT
measured 14 % top-1 agreement with FP32 that way, far beyond what the mixed-precision budget can repair
layer by layer. So a graph with any such node is quantized the way TensorRT and ModelOpt treat
transformers: only the layers with weights (`WEIGHT_OPS`) get INT8 inputs, the nodes below are excluded,
and everything between them stays float. A ResNet has none of them: its INT8 model is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # what a transformer's INT8 model quantizes
NORMALIZATION_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "GroupNormalization",
                     "InstanceNormalization", "Softmax", "LogSoftmax")


@dataclass(frozen=True)
class FloatNode:
    node: str
    op_type: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "op_type": self.op_type, "reason": self.reason}


def float_by_rule(model: Any) -> list[FloatNode]:
    """The nodes of `model` (an ONNX ModelProto) to keep out of INT8 by rule, in graph order."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    # A weight may reach its MatMul through a Transpose/Reshape/Cast of a constant (exporters do this).
    for node in model.graph.node:
        if node.op_type in ("Transpose", "Reshape", "Cast", "Identity", "DequantizeLinear") and node.input \
                and node.input[0] in constants:
            constants.update(node.output)
    chosen = []
    for node in model.graph.node:
        if node.op_type in NORMALIZATION_OPS:
            chosen.append(FloatNode(node.name, node.op_type, "normalization/softmax of a transformer block"))
        elif node.op_type == "MatMul" and len(node.input) >= 2 and not any(i in constants for i in node.input[:2]):
            chosen.append(FloatNode(node.name, node.op_type, "MatMul of two activations (attention)"))
    return [node for node in chosen if node.node]  # ONNX Runtime excludes by name: an unnamed node cannot be
