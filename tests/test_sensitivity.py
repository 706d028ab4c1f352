"""Per-layer INT8 sensitivity, mixed precision to a budget, random-weight checks and validate's intervals,
on the digits ResNet-20 of test_precision.py.

`sensitive` is that model made deliberately fragile in its first convolution, with the same FP32
function: the card divides the blue channel's std by 300 (its inputs become 300x larger) and the
first conv's blue weights are divided by 300. Per-tensor int8 quantization of the input then has
a step far too coarse for the red and green channels, and the blue weights vanish in per-channel
int8: full INT8 misses the gate, and keeping `conv1` alone out of INT8 repairs it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import PrecisionDigits as Digits

FACTOR = 300.0


def _make_sensitive(source: Path, output: Path) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    init = next(i for i in model.graph.initializer if i.name == first.input[1])
    weight = numpy_helper.to_array(init).copy()
    weight[:, 2] /= FACTOR
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    for prop in model.metadata_props:
        if prop.key == "resnet_deploy.card":
            card = json.loads(prop.value)
            card["preprocessing"]["std"][2] /= FACTOR
            prop.value = json.dumps(card)
        elif prop.key == "std":
            std = json.loads(prop.value)
            std[2] /= FACTOR
            prop.value = json.dumps(std)
    onnx.save(model, str(output))
    return output


@pytest.fixture(scope="module")
def sensitive(digits: Digits, tmp_path_factory) -> Path:
    import numpy as np

    from resnet_deploy.onnx_check import run_logits, session

    path = _make_sensitive(digits.onnx, tmp_path_factory.mktemp("sensitive") / "sensitive.onnx")
    # Same function in FP32: the images are rescaled by the card exactly as the weights are.
    scaled = digits.images.copy()
    scaled[:, 2] *= FACTOR
    np.testing.assert_array_equal(run_logits(session(path), scaled[:64]).argmax(1),
                                  run_logits(session(digits.onnx), digits.images[:64]).argmax(1))
    return path


def test_sensitivity_ranks_the_fragile_first_conv_first(sensitive, digits, tmp_path) -> None:
    from resnet_deploy.precision.sensitivity import analyse, markdown_report, write_plot

    result = analyse(sensitive, calib_data=digits.root / "train", samples=128, images=128,
                     cache_base=tmp_path / "s.int8.onnx")
    assert result.images == 128 and result.full_int8["agreement"] < 98.5
    blocks = [layer.block for layer in result.layers]  # network order
    assert blocks[0] == "conv1" and "layer1.0.conv1" in blocks and "fc" in blocks[-1]
    assert [layer.position for layer in result.layers] == list(range(len(blocks)))
    top = result.ranked()[0]
    assert top.block == "conv1" and top.delta_agreement > 0
    assert top.mean_abs_logit_diff < min(layer.mean_abs_logit_diff for layer in result.ranked()[1:])
    # Calibrated once: the cache sits where build-engine looks for it (the user's cache folder, named by its key).
    from resnet_deploy.precision.calibration import cache_folder

    assert list(cache_folder().glob("percentile-*.json"))
    png = write_plot(result, tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = markdown_report(result, png)
    assert "| 1 | `conv1` | Conv |" in report and "s.png" in report


def test_budget_search_meets_the_gate_full_int8_misses(sensitive, digits, tmp_path) -> None:
    import onnx

    from resnet_deploy.precision import quantize_int8

    result = quantize_int8(sensitive, tmp_path / "s.int8.onnx", calib_data=digits.root / "train", samples=128,
                           check_samples=256, min_agreement=98.5)
    mixed = result.mixed
    assert mixed is not None and mixed.passed and mixed.full_int8_agreement < 98.5
    assert [item["block"] for item in mixed.kept_out] == ["conv1"] and mixed.remainder == "fp32"
    assert len(mixed.steps) == 1 and mixed.steps[0]["agreement"] >= 98.5
    assert mixed.selection_images == mixed.confirmation_images == 128
    # Confirmed on the half the search never saw; that is the agreement the result reports.
    assert result.check_images == 128 and result.agreement >= 98.5
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    recorded = json.loads(props["resnet_deploy.mixed_precision"])
    assert recorded["kept_out"][0]["block"] == "conv1" and recorded["steps"][0]["node"] == mixed.kept_out[0]["node"]
    model = onnx.load(str(result.path))
    conv1 = next(n for n in model.graph.node if n.name == mixed.kept_out[0]["node"])
    assert conv1.input[0] == "input" and conv1.input[1].endswith(".weight")  # float input and weight: no Q/DQ
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 10  # the rest is still INT8
    # The ONNX Runtime target's manifest carries the record on.
    from resnet_deploy.artifacts import manifest_path
    from resnet_deploy.targets.onnxruntime import build_onnxruntime_artifact

    artifact = build_onnxruntime_artifact(result.path, tmp_path / "s.int8.cpu.onnx")
    manifest = json.loads(manifest_path(artifact.path).read_text())
    assert manifest["mixed_precision"]["kept_out"] == recorded["kept_out"]
    from resnet_deploy.inspection.manifest import mixed_precision_rows

    (label, text), = mixed_precision_rows(manifest["mixed_precision"])  # what `inspect` shows
    assert label == "kept out of INT8" and text.startswith("conv1 in fp32 (top-1 agreement ")
    # So does OpenVINO's (one common manifest field; TensorRT's reads the same metadata).
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra")
    from resnet_deploy.targets.openvino import build_openvino_ir

    built = build_openvino_ir(result.path, tmp_path / "s.int8.xml", precision="int8")
    assert json.loads(manifest_path(built.path).read_text())["mixed_precision"]["steps"] == recorded["steps"]


def test_strict_mode_fails_with_exit_1_and_writes_no_artifact(cli, sensitive, digits, tmp_path) -> None:
    source = tmp_path / "s.onnx"
    shutil.copy(sensitive, source)
    result = cli("build-engine", "--onnx", str(source), "--int8", "--calib-data", str(digits.root / "train"),
                 "--calib-samples", "128", "--max-fallback-layers", "0", "--target", "onnxruntime",
                 "--min-agreement", "98.5")
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "top-1 agreement ≥ 98.5 % (--min-agreement)" in result.stderr.replace("\n", " ")
    # No model, no manifest, no staging folder (the calibration cache is in the user's cache folder).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx"]


def test_cli_sensitivity_json_plot_report(cli, sensitive, digits, tmp_path) -> None:
    result = cli("sensitivity", str(sensitive), "--calib-data", str(digits.root / "train"), "--calib-samples", "64",
                 "--images", "64", "--plot", str(tmp_path / "s.png"), "--report", str(tmp_path / "s.md"), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ranked"][0]["block"] == "conv1" and document["images"] == 64
    assert (tmp_path / "s.png").stat().st_size > 1000 and "conv1" in (tmp_path / "s.md").read_text()
    bad = cli("sensitivity", str(sensitive), "--calib-data", str(tmp_path / "missing"))
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "no such calibration folder" in bad.stderr


def test_random_weights_build_with_real_images_is_informational(cli, digits, tmp_path) -> None:
    """Random weights checked on real images: the agreement is noise, so it is reported and never refuses."""
    output = tmp_path / "r20.int8.cpu.onnx"
    result = cli("build-engine", "--arch", "resnet20", "--int8", "--calib-data", str(digits.root / "train"),
                 "--calib-samples", "32", "--target", "onnxruntime", "--output", str(output), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    check = document["precision_check"]
    assert check["gate"] is None and "random" in check["informational"] and check["mixed"] is None
    assert "informational" in check["gate_text"]
    assert document["artifact"]["check"]["passed"] and "random" in document["artifact"]["check"]["informational"]
    assert output.is_file()


def test_validate_reports_intervals_and_the_gate_in_builds_words(cli, digits, tmp_path) -> None:
    from resnet_deploy.confidence import wilson_percent
    from resnet_deploy.gates import gate_for, render_gate
    from resnet_deploy.precision import quantize_int8

    int8 = quantize_int8(digits.onnx, tmp_path / "d.int8.onnx", calib_data=digits.root / "train", samples=128).path
    result = cli("validate", str(digits.onnx), str(int8), "--data", str(digits.root / "test"), "--workers", "0",
                 "--json")
    assert result.returncode in (0, 1), result.stderr
    rows = json.loads(result.stdout)["results"]
    reference, row = rows
    images = reference["images"]
    correct = round(reference["top1"] * images / 100)
    assert reference["top1_ci"] == pytest.approx(list(wilson_percent(correct, images)))
    assert reference["top1_ci"][0] < reference["top1"] < reference["top1_ci"][1]
    assert row["agreement_ci"][0] <= row["agreement"] <= row["agreement_ci"][1]
    assert row["top1_delta_ci"][0] <= row["top1_delta"] <= row["top1_delta_ci"][1]
    assert 0 < row["top1_delta_p"] <= 1 and row["top1_delta_significant"] == (row["top1_delta_p"] < 0.05)
    text = cli("validate", str(digits.onnx), str(int8), "--data", str(digits.root / "test"), "--workers", "0",
               "--report", str(tmp_path / "v.md"))
    assert f"gate (int8): {render_gate(gate_for('int8'))}" in text.stdout
    assert render_gate(gate_for("int8")) in (tmp_path / "v.md").read_text()


def test_check_images_sets_how_many_images_the_int8_check_uses(cli, sensitive, digits, tmp_path) -> None:
    """--check-images: the INT8 check (and the budget search's two halves) on more or fewer held-out images."""
    output = tmp_path / "s.int8.cpu.onnx"
    result = cli("build-engine", "--onnx", str(sensitive), "--int8", "--calib-data", str(digits.root / "train"),
                 "--calib-samples", "64", "--check-images", "200", "--target", "onnxruntime", "-o", str(output),
                 "--json")
    assert result.returncode == 0, result.stderr
    check = json.loads(result.stdout)["precision_check"]
    assert check["check_images"] == 100  # the search's confirmation half of 200: what the result reports
    assert check["mixed"]["selection_images"] == check["mixed"]["confirmation_images"] == 100
    bad = cli("build-engine", "--onnx", str(sensitive), "--int8", "--calib-data", str(digits.root / "train"),
              "--check-images", "1")
    assert bad.returncode == 2 and "error: --check-images must be at least 2" in bad.stderr
