"""The architectures against the paper's tables and torchvision."""

from __future__ import annotations

import pytest
import torch
import torchvision

from resnet_deploy.models import (
    ZeroPadShortcut,
    arch_from_depth,
    count_macs,
    count_parameters,
    create_model,
    list_models,
)

# He et al. 2016, Table 6: parameters of the CIFAR-10 ResNets (millions).
TABLE6_PARAMS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}
# Table 1: multiply-adds ("FLOPs") at 224x224, billions, for the paper's own bottleneck.
TABLE1_MACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


@pytest.mark.parametrize("depth", sorted(TABLE6_PARAMS))
def test_cifar_parameters_match_table6(depth: int) -> None:
    params = count_parameters(create_model(f"resnet{depth}")) / 1e6
    assert params == pytest.approx(TABLE6_PARAMS[depth], rel=0.02)


@pytest.mark.parametrize("depth", sorted(TABLE1_MACS))
def test_imagenet_macs_match_table1(depth: int) -> None:
    model = create_model(f"resnet{depth}", bottleneck="original")
    assert count_macs(model, 224) / 1e9 == pytest.approx(TABLE1_MACS[depth], rel=0.05)


def test_resnet50_v15_costs_more_than_the_original() -> None:
    # v1.5 strides the 3x3 instead of the first 1x1: ~4.1 G vs the paper's 3.8 G.
    assert count_macs(create_model("resnet50"), 224) / 1e9 == pytest.approx(4.1, rel=0.01)
    assert count_parameters(create_model("resnet50")) / 1e6 == pytest.approx(25.6, rel=0.01)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_weights_load_strictly_with_identical_outputs(depth: int) -> None:
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")().eval()
    # Non-trivial BN statistics so the comparison covers them too.
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    ours = create_model(f"resnet{depth}").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_option_a_pads_half_before_and_half_after() -> None:
    shortcut = ZeroPadShortcut(16, 32, stride=2)
    x = torch.randn(1, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_shortcut_options_change_parameters_as_in_table3() -> None:
    a = count_parameters(create_model("resnet34", shortcut="A"))
    b = count_parameters(create_model("resnet34", shortcut="B"))
    c = count_parameters(create_model("resnet34", shortcut="C"))
    assert a < b < c
    assert "layer2.0.downsample.0.weight" not in create_model("resnet34", shortcut="A").state_dict()
    assert "layer1.0.downsample.0.weight" in create_model("resnet34", shortcut="C").state_dict()
    cifar_b = create_model("resnet20", shortcut="B").state_dict()
    assert "layer2.0.downsample.0.weight" in cifar_b


def test_plain_twins_have_no_shortcut_and_same_layers() -> None:
    plain, residual = create_model("plain20"), create_model("resnet20")
    assert count_parameters(plain) == count_parameters(residual)  # option A adds no parameters
    block = plain.layer2[0]
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(block.residual(x)))
    assert count_parameters(create_model("plain34")) < count_parameters(create_model("resnet34"))


def test_zero_init_residual_makes_blocks_start_as_identity() -> None:
    model = create_model("resnet18", zero_init_residual=True).eval()
    block = model.layer1[0]
    x = torch.rand(1, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), x)


def test_registry_and_depth_resolution() -> None:
    names = list_models()
    for depth in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110, 1202):
        assert f"resnet{depth}" in names and f"plain{depth}" in names
        assert arch_from_depth(depth) == f"resnet{depth}"
    with pytest.raises(KeyError):
        arch_from_depth(19)
    with pytest.raises(ValueError):
        create_model("resnet20", bottleneck="original")  # not an option of the CIFAR family
    assert create_model("resnet50", num_classes=7).fc.out_features == 7


def test_original_bottleneck_strides_the_first_1x1() -> None:
    block = create_model("resnet50", bottleneck="original").layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    block = create_model("resnet50").layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
