"""INT8 for the CPU it runs on (issue 23): the instruction-set class, the weight form, the artifact judged on this
CPU, and the self-check an artifact carries to every other class of CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy.errors import CheckFailed, UsageError
from resnet_deploy.precision import isa
from resnet_deploy.selfcheck import check_inputs, record, run_check


def test_classes_follow_the_flags_that_decide_int8_arithmetic() -> None:
    assert isa.classify({"avx2", "fma"}, "x86_64") == "avx2"
    assert isa.classify({"avx2", "avx512f"}, "x86_64") == "avx2"  # AVX-512 without VNNI still saturates
    assert isa.classify({"avx2", "avx512f", "avx512_vnni"}, "x86_64") == "vnni"
    assert isa.classify({"avx2", "avx_vnni"}, "x86_64") == "vnni"
    assert isa.classify({"avx512_vnni", "amx_int8", "amx_bf16"}, "x86_64") == "amx"
    assert isa.classify(set(), "aarch64") == "other"
    assert [isa.weight_bits_for(c) for c in ("avx2", "vnni", "amx", "other", "portable")] == [7, 8, 8, 8, 7]
    assert isa.resolve_cpu_target("avx512-vnni") == "vnni"
    assert isa.resolve_cpu_target("native") == isa.this_cpu().cpu_class
    with pytest.raises(UsageError, match="--cpu must be one of"):
        isa.resolve_cpu_target("sse9")
    assert isa.runs_exactly_on(7, "avx2") and not isa.runs_exactly_on(8, "avx2") and isa.runs_exactly_on(8, "amx")


def test_self_check_inputs_are_the_same_numbers_every_time_and_image_like() -> None:
    a = check_inputs(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    b = check_inputs(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert a.shape == (8, 3, 32, 32) and a.dtype == np.float32 and np.array_equal(a, b)
    # Smooth pictures, not per-pixel noise: neighbouring pixels differ far less than the range.
    assert np.abs(np.diff(a, axis=3)).mean() < 0.05 * (a.max() - a.min())


def test_self_check_passes_the_same_arithmetic_and_refuses_other_logits() -> None:
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((3 * 8 * 8, 10)).astype(np.float32)

    def model(x: np.ndarray) -> np.ndarray:
        pooled = x.reshape(len(x), 3, 4, 8, 4, 8).mean(axis=(3, 5)).reshape(len(x), -1)  # 32 → 8 per side
        return pooled @ weights[: pooled.shape[1]] * 3

    inputs = check_inputs(32, (0.5,) * 3, (0.25,) * 3)
    reference = model(inputs)
    check = record(reference, reference + 0.01, precision="int8", reference_name="test", size=32,
                   cpu={"class": "avx2"})
    assert run_check(model, check, (0.5,) * 3, (0.25,) * 3).passed
    assert run_check(model, check, (0.5,) * 3, (0.25,) * 3, static_batch=3).passed  # padded static batches
    shifted = run_check(lambda x: model(x) + 10 * check["tolerance"], check, (0.5,) * 3, (0.25,) * 3)
    assert not shifted.passed and "tolerance" in (shifted.reason or "")
    broken = json.loads(json.dumps(check))
    broken["top_classes"] = broken["top_classes"][:2]
    assert not run_check(model, broken, (0.5,) * 3, (0.25,) * 3).passed


@pytest.fixture(scope="module")
def ort_int8(digits, tmp_path_factory) -> Path:
    """The digits model built for ONNX Runtime INT8 on this CPU, as build-engine does."""
    from resnet_deploy.builder import BuildRequest, build

    folder = tmp_path_factory.mktemp("isa")
    source = folder / "digits.onnx"
    shutil.copy(digits.onnx, source)
    report = build(BuildRequest(onnx=source, precision="int8", calib_data=digits.root / "train", calib_samples=128,
                                check_images=200, calib_method="minmax", target="onnxruntime"))
    return report.output


def _copy_artifact(path: Path, folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(path, folder / path.name)
    shutil.copy(path.with_name(path.name + ".json"), folder / (path.name + ".json"))
    return folder / path.name


def test_the_artifact_is_judged_and_recorded_for_this_cpu(ort_int8) -> None:
    manifest = json.loads(ort_int8.with_name(ort_int8.name + ".json").read_text())
    here = isa.this_cpu()
    assert manifest["isa"]["class"] == here.cpu_class and manifest["isa"]["verified_by"] == "kernels"
    assert manifest["isa"]["weight_bits"] == isa.weight_bits_for(here.cpu_class)
    assert json.loads(_props(ort_int8)["resnet_deploy.quantization"])["weight_bits"] == manifest["isa"]["weight_bits"]
    check = manifest["artifact_check"]["here"]
    assert check["passed"] and check["here"]["images"] == 200 and check["arithmetic"]["images"] == 200
    assert check["kernel_gap"] <= 0.5  # the weight form this CPU needs: its kernels compute the arithmetic
    assert manifest["self_check"]["inputs"]["count"] == 8


def test_another_cpu_class_runs_the_self_check_and_a_corrupted_one_is_refused(ort_int8, digits, tmp_path, cli) -> None:
    from resnet_deploy.artifacts import open_engine, read_manifest
    from resnet_deploy.selfcheck import verify_if_needed

    here = isa.this_cpu().cpu_class
    other = "amx" if here != "amx" else "avx2"
    moved = _copy_artifact(ort_int8, tmp_path / "other-class")
    manifest_file = moved.with_name(moved.name + ".json")
    manifest = json.loads(manifest_file.read_text())
    manifest["isa"]["class"] = other  # as if verified on another class of CPU
    manifest_file.write_text(json.dumps(manifest))
    with open_engine(moved) as engine:  # opening it here runs the check, and it passes: the same model computes
        result = verify_if_needed(moved, read_manifest(moved), engine)
    assert result is not None and result.passed

    manifest["self_check"]["top_logits"] = [[v + 50.0 for v in row] for row in manifest["self_check"]["top_logits"]]
    manifest_file.write_text(json.dumps(manifest))
    from resnet_deploy import selfcheck

    selfcheck._VERIFIED.clear()
    with pytest.raises(CheckFailed, match=f"verified on a {other} CPU, and its self-check fails on this {here}"):
        open_engine(moved)
    run = cli("validate", str(moved), "--data", str(digits.root), "--limit", "4")
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1].startswith("error: "), run.stderr
    assert f"--cpu {here}" in run.stderr and "Traceback" not in run.stderr


def test_inspect_verify_runs_the_check_on_demand(ort_int8, tmp_path, cli) -> None:
    run = cli("inspect", str(ort_int8), "--verify", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["self_check_here"]["passed"] is True
    moved = _copy_artifact(ort_int8, tmp_path / "corrupt")
    manifest_file = moved.with_name(moved.name + ".json")
    manifest = json.loads(manifest_file.read_text())
    manifest["self_check"]["top_classes"] = [row[::-1] for row in manifest["self_check"]["top_classes"]]
    manifest_file.write_text(json.dumps(manifest))
    run = cli("inspect", str(moved), "--verify")
    assert run.returncode == 1 and run.stderr.startswith("error: ") and "self-check fails" in run.stderr


def test_a_refused_build_names_the_users_output_and_leaves_nothing(digits, tmp_path) -> None:
    from test_sensitivity import _make_sensitive

    from resnet_deploy.builder import BuildRequest, build

    # The digits model with a fragile first convolution (test_sensitivity's): full INT8 misses 98.5 % there.
    source = _make_sensitive(digits.onnx, tmp_path / "digits.onnx")
    output = tmp_path / "out" / "mine.int8.cpu.onnx"
    with pytest.raises(CheckFailed) as failed:
        build(BuildRequest(onnx=source, precision="int8", calib_data=digits.root / "train", calib_samples=128,
                           target="onnxruntime", min_agreement=98.5, max_fallback_layers=0, output=output))
    message = str(failed.value)
    assert message.startswith(str(output)) and "resnet-deploy-build-" not in message
    assert "finetune-int8" in message  # the way past calibration's ceiling is named
    assert not output.exists() and not output.with_name(output.name + ".json").exists()
    assert not output.parent.exists() or not [p for p in output.parent.iterdir() if p.name.startswith(".")]


def _props(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _logits_for(top1: np.ndarray, classes: int = 10) -> np.ndarray:
    logits = np.zeros((len(top1), classes), dtype=np.float32)
    logits[np.arange(len(top1)), top1] = 1.0
    return logits


def test_the_build_refuses_a_top1_drop_only_with_confidence() -> None:
    from resnet_deploy.precision.common import judged

    labels = np.zeros(1000, dtype=np.int64)
    reference = np.where(np.arange(1000) < 600, 0, 1)  # FP32 right on 600 images
    marginal = reference.copy()
    marginal[:18] = 1  # 18 right answers lost, 5 gained: Δ -1.3 points, not beyond 1 with confidence
    marginal[600:605] = 0
    check = judged(_logits_for(reference), _logits_for(marginal), labels)
    assert check.top1_delta == pytest.approx(-1.3) and check.top1_delta_ci[1] > -1.0
    delta, note = check.gated_delta(1.0)
    assert delta is None and "not with confidence" in note
    broken = reference.copy()
    broken[:100] = 1  # ten points lost: refused
    check = judged(_logits_for(reference), _logits_for(broken), labels)
    assert check.gated_delta(1.0) == (pytest.approx(-10.0), None)
    assert judged(_logits_for(reference), _logits_for(reference), labels).gated_delta(1.0) == (0.0, None)


def test_saturation_is_claimed_on_strong_evidence_only() -> None:
    from resnet_deploy.gates import saturating

    assert saturating(80, 2, 1000)[0]  # 7.8 points one way: the AVX2 8-bit case
    assert not saturating(15, 4, 1000)[0]  # 1.1 points, p ~ 0.02: kernels that round differently
    assert not saturating(3, 0, 100)[0]  # three flips on 100 images
