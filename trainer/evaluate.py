"""Evaluation during training (top-1/top-5 over all ranks), and the paper's Fig. 7 layer responses."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnet_deploy.models import BasicBlock, Bottleneck
from trainer.distributed import DistContext, all_reduce_sum

Batches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class EvalResult:
    images: int
    loss: float
    top1: float  # percent
    top5: float  # percent


@dataclass
class ResponseStats:
    """Running sum and sum of squares of each hooked layer's output."""

    names: list[str]
    sums: torch.Tensor
    squares: torch.Tensor
    counts: torch.Tensor

    def stds(self) -> list[float]:
        mean = self.sums / self.counts.clamp_min(1)
        var = (self.squares / self.counts.clamp_min(1) - mean.square()).clamp_min(0)
        return var.sqrt().tolist()


def response_layers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, BN module, role) for every 3x3 layer's BN output and every residual function F(x).

    Fig. 7 plots "the outputs of each 3x3 layer, after BN and before other nonlinearity (ReLU/addition)".
    In a basic block both BNs follow a 3x3 convolution and the second is F(x); in a bottleneck the 3x3
    is the middle one and F(x) is the last 1x1's BN.
    """
    layers: list[tuple[str, nn.Module, str]] = []
    for name, block in model.named_modules():
        if isinstance(block, Bottleneck):
            layers.append((f"{name}.bn2", block.bn2, "3x3"))
            layers.append((f"{name}.bn3", block.bn3, "residual"))
        elif isinstance(block, BasicBlock):
            layers.append((f"{name}.bn1", block.bn1, "3x3"))
            layers.append((f"{name}.bn2", block.bn2, "3x3+residual"))
    return layers


@contextlib.contextmanager
def record_responses(model: nn.Module, device: torch.device) -> Iterator[ResponseStats]:
    layers = response_layers(model)
    stats = ResponseStats(
        names=[name for name, _, _ in layers],
        sums=torch.zeros(len(layers), dtype=torch.float64, device=device),
        squares=torch.zeros(len(layers), dtype=torch.float64, device=device),
        counts=torch.zeros(len(layers), dtype=torch.float64, device=device),
    )

    def hook_for(index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            values = output.detach().to(torch.float64)
            stats.sums[index] += values.sum()
            stats.squares[index] += values.square().sum()
            stats.counts[index] += values.numel()
        return hook

    handles = [module.register_forward_hook(hook_for(i)) for i, (_, module, _) in enumerate(layers)]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision when `dtype` is set (bf16 or fp16), else nothing."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def evaluate(
    model: nn.Module,
    batches: Batches,
    ctx: DistContext,
    *,
    autocast_dtype: torch.dtype | None,
    responses: bool = False,
) -> tuple[EvalResult, list[dict[str, Any]] | None]:
    """Loss, top-1 and top-5 over every rank's shard; optionally the std of each layer response (Fig. 7)."""
    was_training = model.training
    model.eval()
    device = ctx.device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits
    images = 0
    recorder = record_responses(model, device) if responses else contextlib.nullcontext()
    with torch.inference_mode(), recorder as stats:
        for x, y in batches():
            with autocast(device, autocast_dtype):
                logits = model(x)
            logits = logits.float()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top == y[:, None]
            images += int(y.shape[0])
            totals += torch.stack([
                F.cross_entropy(logits, y, reduction="sum").to(torch.float64),
                hits[:, 0].sum().to(torch.float64),
                hits.any(dim=1).sum().to(torch.float64),
            ])
    model.train(was_training)
    counted = torch.cat([totals, torch.tensor([float(images)], dtype=torch.float64, device=device)])
    loss_sum, top1, top5, images = all_reduce_sum(ctx, counted).tolist()
    result = EvalResult(int(images), loss_sum / max(images, 1), 100 * top1 / max(images, 1),
                        100 * top5 / max(images, 1))
    layer_stds = None
    if responses and stats is not None:
        for tensor in (stats.sums, stats.squares, stats.counts):
            all_reduce_sum(ctx, tensor)
        roles = {name: role for name, _, role in response_layers(model)}
        layer_stds = [{"layer": name, "role": roles[name], "std": std}
                      for name, std in zip(stats.names, stats.stds(), strict=True)]
    return result, layer_stds
