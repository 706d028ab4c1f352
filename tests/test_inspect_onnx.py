"""`inspect model.onnx`: inputs/outputs with shapes, opset, node counts by type, metadata."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from resnet_deploy.card import CARD_METADATA_KEY
from resnet_deploy.checkpoints import random_model
from resnet_deploy.cli import main
from resnet_deploy.errors import UsageError
from resnet_deploy.export import DEFAULT_OPSET, export_onnx
from resnet_deploy.inspection.onnx import summarize_onnx


def run_main(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        main(list(args))
    return int(exited.value.code or 0), out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Verification is export's business (tests/test_export.py); here only the file matters.
    path = tmp_path_factory.mktemp("inspect") / "resnet20.onnx"
    return export_onnx(random_model("resnet20"), path, verify=False).path


def test_summary_of_an_exported_model(exported: Path) -> None:
    summary = summarize_onnx(exported)
    assert [(t.name, t.dtype, t.shape) for t in summary.inputs] == [("input", "float32", ["batch", 3, 32, 32])]
    assert [(t.name, t.dtype, t.shape) for t in summary.outputs] == [("logits", "float32", ["batch", 10])]
    assert summary.opset == DEFAULT_OPSET
    assert summary.node_counts["Conv"] == 19 and summary.node_counts["Gemm"] == 1
    assert "BatchNormalization" not in summary.node_counts
    assert summary.parameters > 260_000 and summary.initializers > 0
    assert summary.producer.startswith("resnet-deploy")
    assert summary.metadata["arch"] == "resnet20"
    assert summary.card is not None and summary.card["arch"] == "resnet20"

    rows = dict(summary.rows())
    assert rows["input"] == "input: float32[batchx3x32x32]"
    assert rows["output"] == "logits: float32[batchx10]"
    assert rows["opset"] == str(DEFAULT_OPSET)
    assert rows["nodes"].startswith(f"{sum(summary.node_counts.values())}: ") and "Conv 19" in rows["nodes"]
    assert rows["input_size"] == "32" and rows["arch"] == "resnet20"
    assert CARD_METADATA_KEY not in rows  # the card JSON is shown parsed (lineage), not as one long string
    assert "random_weights=True" in rows["card lineage"]


def test_cli_inspect_onnx_table_and_json(exported: Path) -> None:
    code, out, err = run_main("inspect", str(exported))
    assert code == 0, err
    assert "float32[batchx3x32x32]" in out and "Conv 19" in out and "resnet20" in out

    code, out, err = run_main("inspect", str(exported), "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert document["outputs"][0]["name"] == "logits"
    assert document["opset"] == DEFAULT_OPSET
    assert document["node_counts"]["Conv"] == 19 and document["nodes"] == sum(document["node_counts"].values())
    assert document["card"]["arch"] == "resnet20"
    assert document["metadata"]["mean"] == "[0.4914, 0.4822, 0.4465]"
    assert CARD_METADATA_KEY not in document["metadata"]


def test_foreign_onnx_without_card(tmp_path: Path) -> None:
    """Any ONNX model is inspectable; unnamed dynamic dimensions show as '?'."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], np.ones(4, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
                              "tiny", [x], [y], initializer=[w])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))

    summary = summarize_onnx(path)
    assert summary.card is None and summary.metadata == {}
    assert summary.opset == 17 and summary.node_counts == {"Add": 1, "Relu": 1}
    assert summary.parameters == 4
    rows = dict(summary.rows())
    assert rows["input"] == "x: float32[?x4]" and rows["output"] == "y: float32[nx4]"
    assert summary.to_dict()["card"] is None


def test_unreadable_onnx_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07this is not protobuf \xff\xff\xff")
    with pytest.raises(UsageError, match="not a readable ONNX model"):
        summarize_onnx(bad)
    code, out, err = run_main("inspect", str(bad))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "broken.onnx" in lines[0]
    code, _, err = run_main("inspect", str(tmp_path / "absent.onnx"))
    assert code == 2 and "no such file" in err
