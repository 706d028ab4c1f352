"""The residual networks of He et al. 2016 ("Deep Residual Learning for Image Recognition").

Two families, each with plain (no shortcut) twins for the paper's degradation experiments:

* ImageNet (Sec. 3.4, Table 1): ``resnet18/34/50/101/152``. Module names and ``state_dict`` keys
  are torchvision's (``conv1, bn1, layer1..4, fc``; blocks ``conv1..3, bn1..3, downsample``), so
  torchvision weights load with ``strict=True`` and give identical outputs.
* CIFAR-10 (Sec. 4.2, Table 6): ``resnet20/32/44/56/110/1202`` (6n+2 layers, 16/32/64 filters).

Shortcuts follow the paper's Table 3 options: "A" zero-pads new channels (parameter free),
"B" projects only where dimensions change (torchvision's choice, ImageNet default), "C" projects
everywhere. The CIFAR default is "A" with the channel padding split half before and half after,
the layout of the common open reimplementations, so their weights load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ShortcutOption = Literal["A", "B", "C", "none"]
BottleneckStyle = Literal["v1.5", "original"]

IMAGENET_DEPTHS: dict[int, tuple[str, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}
CIFAR_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110, 1202)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by the stride and zero-pad the new channels (no parameters).

    The padding is split half before and half after the existing channels, as in the widely used
    CIFAR reimplementations (``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_before = (out_planes - in_planes) // 2
        self.pad_after = out_planes - in_planes - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


def make_shortcut(
    option: ShortcutOption, in_planes: int, out_planes: int, stride: int
) -> tuple[nn.Module | None, nn.Module | None]:
    """Return ``(downsample, zero_pad)``: at most one is set; both ``None`` means identity."""
    changes_shape = stride != 1 or in_planes != out_planes
    if option == "C" or (option == "B" and changes_shape):
        projection = nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
        return projection, None
    if option in ("A", "B") and changes_shape:
        # Option B projects whenever the shape changes, so only option A reaches here.
        return None, ZeroPadShortcut(in_planes, out_planes, stride)
    return None, None


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (Fig. 5 left). ``shortcut="none"`` gives the plain twin."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, shortcut: ShortcutOption = "B") -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self._add_shortcut(shortcut, in_planes, planes, stride)

    def _add_shortcut(self, option: ShortcutOption, in_planes: int, out_planes: int, stride: int) -> None:
        """The identity, projection (B/C) or zero-padding (A) shortcut; "none" gives the plain twin."""
        self.has_shortcut = option != "none"
        self.downsample, self.zero_pad = make_shortcut(option, in_planes, out_planes, stride)
        self.stride = stride

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The block's response F(x) before the addition (the paper's Fig. 7 analysis)."""
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        if self.has_shortcut:
            out = out + self.shortcut(x)
        return self.relu(out)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            return self.downsample(x)
        if self.zero_pad is not None:
            return self.zero_pad(x)
        return x


class Bottleneck(BasicBlock):
    """1x1 → 3x3 → 1x1 (Fig. 5 right).

    ``style="v1.5"`` strides the 3x3 (torchvision's default, +0.5 % top-1); ``"original"`` strides
    the first 1x1 as in the paper, which is what Table 1's multiply-adds count.
    """

    expansion = 4

    def __init__(  # noqa: PLR0913 - mirrors torchvision's block signature
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: ShortcutOption = "B",
        style: BottleneckStyle = "v1.5",
    ) -> None:
        nn.Module.__init__(self)
        out_planes = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if style == "original" else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self._add_shortcut(shortcut, in_planes, out_planes, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """He initialization (the paper's ref. [13]) as torchvision does it."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
    if zero_init_residual:
        # Each residual branch starts as zero, so every block starts as the identity.
        for module in model.modules():
            if isinstance(module, BasicBlock) and module.has_shortcut:
                nn.init.constant_(module.last_bn().weight, 0)


class ResNet(nn.Module):
    """ImageNet ResNet (Table 1): 7x7/2 stem, max pool, four stages, global pool, fc."""

    def __init__(
        self,
        block: str,
        layers: list[int],
        *,
        num_classes: int = 1000,
        shortcut: ShortcutOption = "B",
        bottleneck: BottleneckStyle = "v1.5",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.block_cls = Bottleneck if block == "bottleneck" else BasicBlock
        self.shortcut_option = shortcut
        self.bottleneck_style = bottleneck
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * self.block_cls.expansion, num_classes)
        _init_weights(self, zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for index in range(blocks):
            block_stride = stride if index == 0 else 1
            if self.block_cls is Bottleneck:
                layer = Bottleneck(
                    self.inplanes, planes, block_stride, shortcut=self.shortcut_option, style=self.bottleneck_style
                )
            else:
                layer = BasicBlock(self.inplanes, planes, block_stride, shortcut=self.shortcut_option)
            layers.append(layer)
            self.inplanes = planes * self.block_cls.expansion
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CifarResNet(nn.Module):
    """CIFAR-10 ResNet (Sec. 4.2): 3x3 stem with 16 filters, three stages of n blocks, pool, fc."""

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int = 10,
        shortcut: ShortcutOption = "A",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, 1202), got {depth}")
        blocks = (depth - 2) // 6
        self.shortcut_option = shortcut
        self.inplanes = 16
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, blocks, stride=1)
        self.layer2 = self._make_layer(32, blocks, stride=2)
        self.layer3 = self._make_layer(64, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self, zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for index in range(blocks):
            layers.append(
                BasicBlock(self.inplanes, planes, stride if index == 0 else 1, shortcut=self.shortcut_option)
            )
            self.inplanes = planes
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------------------------
# Registry: names → builders, with the deployment defaults each family carries (timm-style).
# --------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class FamilyDefaults:
    """What a model of a family expects as input unless its card says otherwise."""

    name: str
    num_classes: int
    input_size: int
    resize_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    default_shortcut: ShortcutOption = "B"


IMAGENET = FamilyDefaults("imagenet", 1000, 224, 256, IMAGENET_MEAN, IMAGENET_STD, "bilinear", "B")
CIFAR = FamilyDefaults("cifar", 10, 32, None, CIFAR10_MEAN, CIFAR10_STD, "bilinear", "A")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: FamilyDefaults
    depth: int
    plain: bool
    build: Callable[..., nn.Module] = field(repr=False)


_REGISTRY: dict[str, ModelEntry] = {}


def _register_imagenet(depth: int, plain: bool) -> None:
    block, layers = IMAGENET_DEPTHS[depth]
    name = f"{'plain' if plain else 'resnet'}{depth}"

    def build(*, num_classes: int = 1000, shortcut: ShortcutOption = "B", bottleneck: BottleneckStyle = "v1.5",
              zero_init_residual: bool = False) -> nn.Module:
        return ResNet(block, layers, num_classes=num_classes, shortcut="none" if plain else shortcut,
                      bottleneck=bottleneck, zero_init_residual=zero_init_residual and not plain)

    _REGISTRY[name] = ModelEntry(name, IMAGENET, depth, plain, build)


def _register_cifar(depth: int, plain: bool) -> None:
    name = f"{'plain' if plain else 'resnet'}{depth}"

    def build(*, num_classes: int = 10, shortcut: ShortcutOption = "A", zero_init_residual: bool = False) -> nn.Module:
        return CifarResNet(depth, num_classes=num_classes, shortcut="none" if plain else shortcut,
                           zero_init_residual=zero_init_residual and not plain)

    _REGISTRY[name] = ModelEntry(name, CIFAR, depth, plain, build)


for _depth in IMAGENET_DEPTHS:
    _register_imagenet(_depth, plain=False)
    _register_imagenet(_depth, plain=True)
for _depth in CIFAR_DEPTHS:
    _register_cifar(_depth, plain=False)
    _register_cifar(_depth, plain=True)


def list_models(family: str | None = None) -> list[str]:
    """Registered model names, ImageNet family first, then CIFAR, each in depth order."""
    entries = sorted(_REGISTRY.values(), key=lambda e: (e.family.name != "imagenet", e.plain, e.depth))
    return [e.name for e in entries if family is None or e.family.name == family]


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; choose one of: {', '.join(list_models())}") from None


def arch_from_depth(depth: int, *, plain: bool = False) -> str:
    """`--depth N`: 18/34/50/101/152 → ImageNet family, 6n+2 → CIFAR family."""
    prefix = "plain" if plain else "resnet"
    if depth in IMAGENET_DEPTHS or depth in CIFAR_DEPTHS:
        return f"{prefix}{depth}"
    raise KeyError(
        f"no ResNet of depth {depth}: ImageNet depths are {sorted(IMAGENET_DEPTHS)}, "
        f"CIFAR depths are {list(CIFAR_DEPTHS)}"
    )


def create_model(name: str, *, num_classes: int | None = None, **options: object) -> nn.Module:
    """Build a registered model. Options: ``shortcut`` (A/B/C), ``bottleneck`` (v1.5/original, ImageNet),
    ``zero_init_residual``."""
    entry = get_entry(name)
    kwargs = dict(options)
    kwargs["num_classes"] = num_classes if num_classes is not None else entry.family.num_classes
    try:
        return entry.build(**kwargs)
    except TypeError as exc:  # an option the family does not have
        raise ValueError(f"{name}: {exc}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, channels: int = 3) -> int:
    """Multiply-adds of one forward pass at batch 1, counted by PyTorch's own FLOP counter.

    The paper's Table 1 "FLOPs" are multiply-adds of convolutions and the fc layer, which is what
    this returns (FLOPs / 2).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, channels, input_size, input_size))
    model.train(was_training)
    return counter.get_total_flops() // 2
