"""Checkpoints load exactly when torch would load them; common containers are recognised without flags.

Every file here is made with torch itself (the way the publisher's tool saves it), never downloaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resnet_deploy.card import read_card
from resnet_deploy.checkpoints import load_model
from resnet_deploy.errors import UsageError
from resnet_deploy.models import create_model


def _trained_like(arch: str = "resnet20", seed: int = 0, **kw) -> torch.nn.Module:
    """A model whose BatchNorm statistics are not the defaults (so a wrong fill would change the logits)."""
    torch.manual_seed(seed)
    model = create_model(arch, **kw)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    return model.eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randn(4, 3, 32, 32))


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_old_checkpoint_without_num_batches_tracked_imports_with_identical_logits(tmp_path: Path, cli) -> None:
    # The shape of widely used pre-0.4.1 CIFAR ResNet checkpoints: DataParallel prefix, `linear` head,
    # no num_batches_tracked, wrapped with the best accuracy.
    model = _trained_like()
    state = {k.replace("fc.", "linear."): v for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "best_prec1": 91.0},
               tmp_path / "resnet20-old.th")
    out = tmp_path / "card.safetensors"
    result = cli("import-weights", str(tmp_path / "resnet20-old.th"), "--arch", "resnet20",
                 "--rename", "linear=fc", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["arch"] == "resnet20"
    assert read_card(out).arch == "resnet20"
    loaded = load_model(out)
    assert torch.equal(_logits(loaded.model), _logits(model))
    # torch fills what it fills: the module's own counter (0), as load_state_dict(strict=True) does.
    reference = create_model("resnet20")
    reference.load_state_dict({k.replace("linear.", "fc."): v for k, v in state.items()}, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(),
                                                 loaded.model.state_dict().values(), strict=True))


def test_missing_num_batches_tracked_is_refused_where_torch_refuses_it(tmp_path: Path) -> None:
    # With version-2 BatchNorm metadata torch does not fill the counter: strict loading fails there, so here too.
    state = _trained_like().state_dict()  # an OrderedDict carrying torch's per-module `_metadata`
    for key in [k for k in state if k.endswith("num_batches_tracked")]:
        del state[key]
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        create_model("resnet20").load_state_dict(state, strict=True)
    torch.save({"state_dict": state}, tmp_path / "new.pth")
    with pytest.raises(UsageError, match=r"missing keys: bn1\.num_batches_tracked"):
        load_model(tmp_path / "new.pth", arch="resnet20")


def test_error_lists_missing_unexpected_and_mis_shaped_keys_together(tmp_path: Path) -> None:
    state = dict(_trained_like().state_dict())
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["fc.weight"] = torch.zeros(5, 64)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(UsageError) as info:
        load_model(tmp_path / "w.pth", arch="resnet20", num_classes=10)
    message = str(info.value)
    assert "missing keys: layer1.0.conv1.weight" in message
    assert "unexpected keys: extra.weight" in message
    assert "shape mismatches: fc.weight (5, 64) vs (10, 64)" in message


def _timm_checkpoint(path: Path, model: torch.nn.Module, ema: torch.nn.Module | None) -> None:
    # timm's CheckpointSaver: epoch, arch, state_dict, optimizer, args (a Namespace), version, [state_dict_ema].
    obj = {"epoch": 12, "arch": "resnet20", "state_dict": model.state_dict(),
           "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
           "args": argparse.Namespace(model="resnet20", lr=0.1, epochs=100), "version": 2, "metric": 91.2}
    if ema is not None:
        obj["state_dict_ema"] = ema.state_dict()
    torch.save(obj, path)


def test_timm_checkpoint_takes_state_dict_and_says_ema_is_there(tmp_path: Path, cli) -> None:
    model, ema = _trained_like(seed=0), _trained_like(seed=1)
    _timm_checkpoint(tmp_path / "checkpoint-12.pth.tar.pth", model, ema)
    loaded = load_model(tmp_path / "checkpoint-12.pth.tar.pth", arch="resnet20")
    assert torch.equal(_logits(loaded.model), _logits(model))
    assert any("'state_dict_ema'" in n and "--use-ema" in n for n in loaded.notes)
    loaded = load_model(tmp_path / "checkpoint-12.pth.tar.pth", arch="resnet20", use_ema=True)
    assert torch.equal(_logits(loaded.model), _logits(ema))
    result = cli("import-weights", str(tmp_path / "checkpoint-12.pth.tar.pth"), "--arch", "resnet20", "--use-ema",
                 "-o", str(tmp_path / "ema.safetensors"))
    assert result.returncode == 0, result.stderr
    assert "took the EMA weights ('state_dict_ema')" in result.stderr


def test_timm_checkpoint_with_only_ema_or_use_ema_without_it(tmp_path: Path) -> None:
    model = _trained_like()
    torch.save({"state_dict_ema": model.state_dict(), "epoch": 1}, tmp_path / "ema_only.pth")
    loaded = load_model(tmp_path / "ema_only.pth", arch="resnet20")
    assert torch.equal(_logits(loaded.model), _logits(model)) and "only weights" in loaded.notes[0]
    _timm_checkpoint(tmp_path / "no_ema.pth", model, None)
    with pytest.raises(UsageError, match="--use-ema: no EMA weights"):
        load_model(tmp_path / "no_ema.pth", arch="resnet20", use_ema=True)


@pytest.mark.parametrize("attribute", ["model", "net"])
def test_lightning_ckpt_prefix_is_stripped(tmp_path: Path, attribute: str) -> None:
    model = _trained_like()
    torch.save({"epoch": 4, "global_step": 400, "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"{attribute}.{k}": v for k, v in model.state_dict().items()},
                "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": {"lr": 0.1}},
               tmp_path / "epoch=4-step=400.ckpt")
    loaded = load_model(tmp_path / "epoch=4-step=400.ckpt", arch="resnet20")
    assert torch.equal(_logits(loaded.model), _logits(model))
    assert any(f"'{attribute}.'" in n for n in loaded.notes)


def test_plain_safetensors_are_foreign_weights_that_need_an_arch(tmp_path: Path) -> None:
    model = _trained_like()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(UsageError, match="plain safetensors.*pass --arch"):
        load_model(tmp_path / "model.safetensors")
    loaded = load_model(tmp_path / "model.safetensors", arch="resnet20")
    assert loaded.kind == "foreign" and torch.equal(_logits(loaded.model), _logits(model))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, and still what such files come from
def test_torchscript_archive_is_refused_with_how_to_save_a_state_dict(tmp_path: Path, cli) -> None:
    model = _trained_like()
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 32, 32)), str(tmp_path / "scripted.pt"))
    with pytest.raises(UsageError, match=r"TorchScript archive.*state_dict\(\)"):
        load_model(tmp_path / "scripted.pt", arch="resnet20")
    result = cli("import-weights", str(tmp_path / "scripted.pt"), "--arch", "resnet20",
                 "-o", str(tmp_path / "x.safetensors"))
    assert result.returncode == 2 and "TorchScript" in _one_error_line(result)


def test_whole_pickled_module_is_refused_with_how_to_save_a_state_dict(tmp_path: Path, cli) -> None:
    torch.save(_trained_like(), tmp_path / "whole.pth")
    with pytest.raises(UsageError, match=r"whole pickled nn\.Module.*model\.state_dict\(\)"):
        load_model(tmp_path / "whole.pth", arch="resnet20")
    result = cli("import-weights", str(tmp_path / "whole.pth"), "--arch", "resnet20",
                 "-o", str(tmp_path / "x.safetensors"))
    assert result.returncode == 2 and "nn.Module" in _one_error_line(result)
    assert not (tmp_path / "x.safetensors").exists()
