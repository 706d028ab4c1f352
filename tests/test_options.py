"""The shared command-line options: one --device grammar and default rule, --output with its hidden --out alias."""

from __future__ import annotations

import pytest

from resnet_deploy.commands._options import parse_device
from resnet_deploy.errors import UsageError
from resnet_deploy.runner import rewrite_hidden_aliases


@pytest.mark.parametrize(("given", "parsed"), [("cpu", "cpu"), ("CUDA", "cuda"), (" cuda:1 ", "cuda:1")])
def test_device_grammar(given: str, parsed: str) -> None:
    assert parse_device(given) == parsed


def test_auto_is_cuda_only_where_pytorch_sees_a_gpu() -> None:
    import torch

    assert parse_device("auto") == parse_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("bad", ["tpu", "cuda:", "cuda:x", "gpu0", ""])
def test_bad_device_names_the_grammar(bad: str) -> None:
    with pytest.raises(UsageError, match="auto, cpu, cuda or cuda:N"):
        parse_device(bad)


def test_out_is_a_hidden_alias_of_output() -> None:
    argv = ["train", "--out", "a", "--out=b", "--output", "c", "--outer", "--", "--out"]
    assert rewrite_hidden_aliases(argv) == ["train", "--output", "a", "--output=b", "--output", "c", "--outer",
                                            "--", "--out"]


@pytest.mark.parametrize("command", ["train", "demo"])
def test_help_shows_output_not_out(cli, command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "--output" in result.stdout and "--out " not in result.stdout and "--out," not in result.stdout


def test_every_device_option_refuses_the_same_way(cli) -> None:
    for command in (("bench", "--depth", "20"), ("train", "--depth", "20"), ("validate", "m.onnx", "--data", ".")):
        result = cli(*command, "--device", "tpu")
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.strip() == "error: --device must be auto, cpu, cuda or cuda:N, got 'tpu'"
