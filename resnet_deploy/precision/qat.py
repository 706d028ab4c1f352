"""Fake-quantized ResNets for quantization-aware fine-tuning, in exactly the form post-training INT8 writes.

`build-engine --int8` (`int8.py`) runs ONNX Runtime's `quantize_static` in QDQ format on the FP32
export, whose BatchNorms are folded into the convolutions. On a ResNet that puts:

* per-channel symmetric weights on axis 0 (Conv and Gemm), float weights behind a Q/DQ pair,
  scale = max|w| / 127 per output channel (/ 64 with 7-bit weights, `isa.weight_bits_for`); fine-tuning
  keeps that form but clips each channel where it costs least (`fit_weight_clipping`: scale = clip · max|w| / levels);
* per-tensor symmetric int8 activations (zero point 0, scale = calibrated threshold / 127) on the
  model input, every Conv output, every Relu output, every residual Add output, the Gemm input
  (after the global pool and flatten) and the logits (`quantize_logits=False`, finetune-int8's default,
  leaves them float: their grid alone flips near-ties);
* float biases; Slice/Pad/MaxPool get a pair with their input's scale, which changes nothing (they
  move values already on that grid), so none is made here.

`QatResNet` is that arithmetic in PyTorch: BatchNorm folded once into each convolution (then trained
as a conv bias), a `QuantAct` at each activation place, weights quantized per channel in `QConv` /
`QLinear`. Rounding is ONNX QuantizeLinear's: x / scale, rounded half to even (`torch.round`),
saturated to [-128, 127]; dequantized as q · scale. Gradients pass the rounding straight through;
activation scales stay where calibration put them; weight scales follow
the weights (clip · max |w| per channel; clip fitted once, before training). Clipped 7-bit weights are
exported clipped: QuantizeLinear saturates at ±127, the 7-bit range is ±64.

`export_qdq` writes the model with torch's own `fake_quantize_per_tensor_affine` /
`fake_quantize_per_channel_affine`, which torch's TorchScript exporter (`dynamo=False`; torch 2.14
still ships it) writes as QuantizeLinear/DequantizeLinear pairs; `check_qdq` runs the file in ONNX
Runtime with graph optimizations off (the Q/DQ arithmetic itself) and compares it with this module.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnet_deploy.errors import UsageError
from resnet_deploy.models import BasicBlock, Bottleneck, CifarResNet, ResNet

ACT_QMIN, ACT_QMAX = -128, 127  # what ONNX QuantizeLinear saturates int8 to
ACT_LEVELS = 127  # symmetric activations: threshold / 127 (ORT's symmetric int8 range is [-127, 127])
PERCENTILE = 99.999  # the post-training default (calibration.CALIBRATOR_SETTINGS["percentile"])
HISTOGRAM_BINS = 2048
CALIBRATION_METHODS = ("percentile", "minmax")
MIN_SCALE = 1e-8
CLIP_MIN, CLIP_STEPS = 0.5, 51  # the weight clip factors fit_weight_clipping tries


def weight_levels(bits: int) -> int:
    """Largest |q| of a symmetric weight: 127 for 8 bits, 64 for 7 (ONNX Runtime's reduce_range)."""
    if bits not in (7, 8):
        raise UsageError(f"INT8 weights are 7 or 8 bits, got {bits}")
    return 127 if bits == 8 else 64


class QuantAct(nn.Module):
    """Per-tensor symmetric int8 fake quantization of an activation (ONNX QuantizeLinear → DequantizeLinear).

    Modes: "quant" (training and evaluation), "observe" (calibration: records |x| and passes x through),
    "export" (torch's fake_quantize op, which the ONNX exporter writes as a Q/DQ pair)."""

    def __init__(self) -> None:
        super().__init__()
        # Set by `calibrate`, then kept: learning it (LSQ's gradient, or Adam at a rate per scale) did not raise
        # agreement in a fine-tuning this short (docs/BENCHMARKS.md). A parameter still, so the state holds it.
        self.scale = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.mode = "quant"
        self.observed_max = 0.0
        self.histogram: torch.Tensor | None = None  # of |x| over [0, observed_max], second calibration pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            self._observe(x.detach())
            return x
        if self.mode == "export":  # constants set by `freeze_for_export`
            return torch.fake_quantize_per_tensor_affine(x, self.export_scale, self.export_zero, ACT_QMIN, ACT_QMAX)
        with torch.autocast(x.device.type, enabled=False):  # the grid is float32 arithmetic, as in ONNX
            x = x.float()
            if not torch.is_grad_enabled():
                return torch.clamp(torch.round(x / self.scale.clamp_min(MIN_SCALE)), ACT_QMIN, ACT_QMAX) * \
                    self.scale.clamp_min(MIN_SCALE)
            # torch's fused kernel: x / scale rounded half to even, the gradient passed straight through inside
            # the int8 range (none where it saturates). Several times faster than the elementwise chain.
            zero = torch.zeros(1, dtype=torch.int32, device=x.device)
            return torch.fake_quantize_per_tensor_affine(x, self.scale.clamp_min(MIN_SCALE).reshape(1), zero,
                                                         ACT_QMIN, ACT_QMAX)

    def _observe(self, x: torch.Tensor) -> None:
        magnitude = x.float().abs()
        if self.histogram is None:
            self.observed_max = max(self.observed_max, float(magnitude.max()))
            return
        top = max(self.observed_max, 1e-12)
        self.histogram += torch.histc(magnitude.clamp(max=top), bins=HISTOGRAM_BINS, min=0.0, max=top).cpu()

    def threshold(self, method: str) -> float:
        """The calibrated |x| threshold: the maximum, or the PERCENTILE-th percentile of the histogram."""
        if method == "minmax" or self.histogram is None or float(self.histogram.sum()) == 0:
            return self.observed_max
        cdf = torch.cumsum(self.histogram.double(), 0) / self.histogram.sum().double()
        index = int(torch.searchsorted(cdf, torch.tensor(PERCENTILE / 100.0, dtype=torch.float64)))
        return self.observed_max * min(index + 1, HISTOGRAM_BINS) / HISTOGRAM_BINS


class _QWeight(nn.Module):
    """Per-channel (axis 0) symmetric weight quantization shared by QConv and QLinear.

    scale = clip · max|w| / levels per output channel: `clip` is 1 (the post-training rule) until
    `fit_weight_clipping` sets each channel's factor that minimizes its rounding + clipping error."""

    levels: int
    clip: torch.Tensor

    def _init_clip(self, channels: int) -> None:
        self.register_buffer("clip", torch.ones(channels))

    def weight_scale(self) -> torch.Tensor:
        w = self.weight.detach()
        return (w.abs().reshape(w.shape[0], -1).amax(1) * self.clip / self.levels).clamp_min(MIN_SCALE)

    @torch.no_grad()
    def fit_clip(self) -> None:
        """Each channel's clip factor in [CLIP_MIN, 1] with the least squared weight error (a grid search)."""
        w = self.weight.detach().reshape(self.weight.shape[0], -1)
        top = w.abs().amax(1).clamp_min(MIN_SCALE)
        best_error = torch.full_like(top, float("inf"))
        for factor in torch.linspace(CLIP_MIN, 1.0, CLIP_STEPS, dtype=w.dtype).tolist():
            step = (top * factor / self.levels)[:, None]
            error = ((torch.clamp(torch.round(w / step), -self.levels, self.levels) * step - w) ** 2).sum(1)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            self.clip.copy_(torch.where(better, torch.full_like(top, factor), self.clip))

    def quantized_weight(self, mode: str) -> torch.Tensor:
        if mode == "export":  # constants set by `freeze_for_export`
            return torch.fake_quantize_per_channel_affine(self.weight, self.export_scale, self.export_zero, 0,
                                                          ACT_QMIN, ACT_QMAX)
        scale = self.weight_scale()
        if torch.is_grad_enabled():  # torch's fused kernel: straight-through gradient inside ±levels, none outside
            zero = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
            return torch.fake_quantize_per_channel_affine(self.weight, scale, zero, 0, -self.levels, self.levels)
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        s = scale.reshape(shape)
        return torch.clamp(torch.round(self.weight / s), -self.levels, self.levels) * s


class QConv(_QWeight):
    """A convolution with its BatchNorm folded in (weight and bias trained), weights fake-quantized."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, levels: int) -> None:
        super().__init__()
        weight = conv.weight.detach().clone().float()
        bias = conv.bias.detach().clone().float() if conv.bias is not None else torch.zeros(weight.shape[0])
        if bn is not None:  # what the exporter's Conv+BatchNormalization fusion computes
            factor = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
            weight = weight * factor.reshape(-1, 1, 1, 1)
            bias = (bias - bn.running_mean.float()) * factor + bn.bias.detach().float()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.levels = levels
        self.mode = "quant"
        self._init_clip(weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quantized_weight(self.mode) if self.mode != "observe" else self.weight
        bias = self.bias
        if x.dtype != w.dtype:  # bf16/fp16 autocast hands over half activations; the grid stays float32 above
            w, bias = w.to(x.dtype), bias.to(x.dtype)
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)


class QLinear(_QWeight):
    def __init__(self, linear: nn.Linear, levels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone().float())
        self.bias = nn.Parameter(linear.bias.detach().clone().float())
        self.levels = levels
        self.mode = "quant"
        self._init_clip(linear.weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quantized_weight(self.mode) if self.mode != "observe" else self.weight
        bias = self.bias
        if x.dtype != w.dtype:
            w, bias = w.to(x.dtype), bias.to(x.dtype)
        return F.linear(x, w, bias)


class QatBlock(nn.Module):
    """A basic or bottleneck block: conv → Q → (relu → Q → conv → Q)… → add → Q → relu → Q."""

    def __init__(self, block: BasicBlock, levels: int) -> None:
        super().__init__()
        pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        if isinstance(block, Bottleneck):
            pairs.append((block.conv3, block.bn3))
        self.convs = nn.ModuleList(QConv(c, b, levels) for c, b in pairs)
        self.conv_q = nn.ModuleList(QuantAct() for _ in pairs)
        self.relu_q = nn.ModuleList(QuantAct() for _ in pairs[:-1])
        self.has_shortcut = block.has_shortcut
        self.downsample = QConv(block.downsample[0], block.downsample[1], levels) \
            if block.downsample is not None else None
        self.downsample_q = QuantAct() if block.downsample is not None else None
        self.zero_pad = copy.deepcopy(block.zero_pad)  # slice + pad of quantized values: stays on their grid
        self.add_q = QuantAct() if block.has_shortcut else None
        self.out_q = QuantAct()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            out = self.conv_q[i](conv(out))
            if i < last:
                out = self.relu_q[i](F.relu(out))
        if self.has_shortcut:
            if self.downsample is not None:
                assert self.downsample_q is not None
                shortcut = self.downsample_q(self.downsample(x))
            elif self.zero_pad is not None:
                shortcut = self.zero_pad(x)
            else:
                shortcut = x
            assert self.add_q is not None
            out = self.add_q(out + shortcut)
        return self.out_q(F.relu(out))


class QatResNet(nn.Module):
    """The fake-quantized twin of a `models.ResNet` / `models.CifarResNet` (see the module docstring)."""

    def __init__(self, model: nn.Module, weight_bits: int, quantize_logits: bool = True) -> None:
        super().__init__()
        if not isinstance(model, (ResNet, CifarResNet)):
            raise UsageError(f"INT8 fine-tuning takes the ResNets of resnet_deploy.models, not {type(model).__name__}")
        levels = weight_levels(weight_bits)
        self.weight_bits = weight_bits
        self.input_q = QuantAct()
        self.stem = QConv(model.conv1, model.bn1, levels)
        self.stem_q = QuantAct()
        self.stem_relu_q = QuantAct()
        self.maxpool = copy.deepcopy(model.maxpool) if isinstance(model, ResNet) else None
        self.blocks = nn.Sequential(*(QatBlock(b, levels) for stage in model.stages() for b in stage))
        self.flat_q = QuantAct()
        self.fc = QLinear(model.fc, levels)
        self.logits_q = QuantAct()  # calibrated either way: its step is the Q/DQ check's unit of logit error
        self.quantize_logits = quantize_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_relu_q(F.relu(self.stem_q(self.stem(self.input_q(x)))))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.blocks(x)
        x = self.flat_q(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        logits = self.fc(x)
        # Unquantized logits still pass the quantizer while calibrating (observe mode passes them through).
        return self.logits_q(logits) if self.quantize_logits or self.logits_q.mode == "observe" else logits

    def quantizers(self) -> list[QuantAct]:
        return [m for m in self.modules() if isinstance(m, QuantAct)]

    def fit_weight_clipping(self) -> None:
        """Per-channel weight clip factors with the least rounding + clipping error (`_QWeight.fit_clip`)."""
        for module in self.modules():
            if isinstance(module, (QConv, QLinear)):
                module.fit_clip()

    @torch.no_grad()
    def freeze_for_export(self) -> None:
        """Every scale and zero point as a constant buffer, and export mode: the exporter then writes plain
        initializers into the Q/DQ pairs, no scale arithmetic. For a copy that is only exported."""
        for module in self.modules():
            if isinstance(module, QuantAct):
                module.register_buffer("export_scale", module.scale.detach().clamp_min(MIN_SCALE).clone())
                module.register_buffer("export_zero", torch.zeros((), dtype=torch.int32))
            elif isinstance(module, (QConv, QLinear)):
                scale = module.weight_scale().clone()
                # QuantizeLinear saturates at ±127, not ±levels: clipped weights are stored clipped
                bound = (scale * module.levels).reshape((-1,) + (1,) * (module.weight.dim() - 1))
                module.weight.copy_(torch.maximum(torch.minimum(module.weight, bound), -bound))
                module.register_buffer("export_scale", scale)
                module.register_buffer("export_zero", torch.zeros(scale.shape, dtype=torch.int32))
        self.set_mode("export")

    def set_mode(self, mode: str) -> None:
        for module in self.modules():
            if isinstance(module, (QuantAct, QConv, QLinear)):
                module.mode = mode


@dataclass
class CalibrationSummary:
    method: str
    images: int
    quantizers: int
    thresholds: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def calibrate(model: QatResNet, batches: Iterable[torch.Tensor], method: str = "percentile") -> CalibrationSummary:
    """Set every activation scale from the float model's activations on `batches` (re-iterable):
    one pass for the maxima, one for the |x| histograms (percentile); scale = threshold / 127."""
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    was_training = model.training
    model.eval()
    model.set_mode("observe")
    quantizers = model.quantizers()
    for q in quantizers:
        q.observed_max, q.histogram = 0.0, None
    images = 0
    try:
        for x in batches:
            model(x)
            images += len(x)
        if images == 0:
            raise UsageError("calibration needs at least one image")
        if method == "percentile":
            for q in quantizers:
                q.histogram = torch.zeros(HISTOGRAM_BINS, dtype=torch.float64)
            for x in batches:
                model(x)
        thresholds = []
        for q in quantizers:
            threshold = q.threshold(method)
            thresholds.append(threshold)
            q.scale.fill_(max(threshold / ACT_LEVELS, MIN_SCALE))
            q.histogram = None
    finally:
        model.set_mode("quant")
        model.train(was_training)
    return CalibrationSummary(method, images, len(quantizers), thresholds)
