"""FP16 and calibrated INT8 (Q/DQ) models on a small trained ResNet-20, proven on ONNX Runtime.

The fixture trains a CIFAR-style ResNet-20 on scikit-learn's handwritten digits (8x8, as RGB PNG
files in an ImageFolder tree) for a few epochs, exports it with its card, and every test starts
from that ONNX model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import PRECISION_DIGITS_SIZE as SIZE
from conftest import PrecisionDigits as Digits


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float((logits.argmax(axis=1) == labels).mean())


def _accuracy(path: Path, d: Digits) -> float:
    from resnet_deploy.onnx_check import run_logits, session

    return _top1(run_logits(session(path), d.images), d.labels)


def _props(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


# --- FP16 -------------------------------------------------------------------------------------------------


def test_fp16_agrees_with_fp32_and_keeps_float32_io(digits, tmp_path) -> None:
    import onnx

    from resnet_deploy.precision import FP16_MIN_AGREEMENT, convert_fp16

    result = convert_fp16(digits.onnx, tmp_path / "digits.fp16.onnx", check_images=digits.images)
    assert result.gate == FP16_MIN_AGREEMENT and result.check_data == "images"
    assert result.agreement >= 99.5, result
    assert abs(_accuracy(result.path, digits) - digits.fp32_top1) <= 0.5
    model = onnx.load(str(result.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [i.data_type for i in model.graph.initializer if i.data_type in (1, 10)]
    assert weights.count(onnx.TensorProto.FLOAT16) > 0.9 * len(weights)
    props = _props(result.path)
    assert props["resnet_deploy.precision"] == "fp16"
    assert props["resnet_deploy.card"] == _props(digits.onnx)["resnet_deploy.card"]
    assert json.loads(props["resnet_deploy.verification"])["agreement"] == pytest.approx(result.agreement)


def test_fp16_keeps_in_fp32_what_would_overflow(digits, tmp_path) -> None:
    """Features scaled past FP16's range before the classifier: those nodes stay FP32 and the model still agrees."""
    import onnx
    from onnx import numpy_helper

    from resnet_deploy.precision import convert_fp16

    model = onnx.load(str(digits.onnx))
    # Scale the classifier's input up by 1e4 and its weights down by 1e4: the same logits, but activations
    # far beyond 65504 in between.
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    weights = {i.name: i for i in model.graph.initializer}
    w = weights[gemm.input[1]]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1e-4, w.name))
    model.graph.initializer.append(numpy_helper.from_array(np.array(1e4, dtype=np.float32), "huge_scale"))
    mul = onnx.helper.make_node("Mul", [gemm.input[0], "huge_scale"], ["scaled_features"], name="scale_features")
    gemm.input[0] = "scaled_features"
    model.graph.node.insert(list(model.graph.node).index(gemm), mul)
    source = tmp_path / "scaled.onnx"
    onnx.save(model, str(source))

    result = convert_fp16(source, tmp_path / "scaled.fp16.onnx", check_images=digits.images[:64])
    assert {"scale_features", gemm.name} <= set(result.fp32_nodes)
    assert result.agreement >= 99.5 and result.max_abs_logit_diff < 0.1


# --- INT8 --------------------------------------------------------------------------------------------------


def test_int8_within_one_point_of_fp32(digits, tmp_path) -> None:
    from resnet_deploy.precision import INT8_MIN_AGREEMENT, quantize_int8

    # A data set root: calibration draws from its train/ split, never from the test images.
    result = quantize_int8(digits.onnx, tmp_path / "digits.int8.onnx", calib_data=digits.root, method="percentile")
    assert result.precision == "int8" and result.calibration is not None
    assert result.calibration.data == str(digits.root / "train")
    assert result.calibration.samples == 512 and result.check_data == "held-out images"
    assert result.gate == INT8_MIN_AGREEMENT and result.agreement >= INT8_MIN_AGREEMENT
    assert abs(_accuracy(result.path, digits) - digits.fp32_top1) <= 1.0
    props = _props(result.path)
    assert props["resnet_deploy.precision"] == "int8"
    assert props["resnet_deploy.card"] == _props(digits.onnx)["resnet_deploy.card"]
    calibration = json.loads(props["resnet_deploy.calibration"])
    assert calibration["method"] == "percentile" and calibration["set_sha256"] == result.calibration.set_sha256


def test_int8_is_the_qdq_form_tensorrt_takes(digits, tmp_path) -> None:
    """Zero points 0, int8 everywhere; weights per-channel on axis 0 (one scale per output channel); float bias."""
    import onnx
    from onnx import numpy_helper

    from resnet_deploy.precision import quantize_int8

    path = quantize_int8(digits.onnx, tmp_path / "digits.int8.onnx", calib_data=digits.root / "train", samples=64,
                         method="minmax").path
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers = {i: n for n in model.graph.node for i in n.input}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    weight_qs = 0
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
        scale = inits[node.input[1]]
        if node.op_type == "QuantizeLinear" and node.input[0] in inits:  # a weight
            weight_qs += 1
            weight = inits[node.input[0]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            assert axis == 0 and scale.shape == (weight.shape[0],), node.name
            assert consumers[node.output[0]].op_type == "DequantizeLinear"
        elif node.op_type == "QuantizeLinear":  # an activation: per tensor
            assert scale.size == 1
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert weight_qs == len(convs)
    dq_inputs = {n.input[0] for n in qdq if n.op_type == "DequantizeLinear"}
    assert not [name for name in dq_inputs if name in inits and inits[name].dtype == np.int32], "int32 bias DQ"


def test_int8_fp16_remainder(digits, tmp_path) -> None:
    import onnx

    from resnet_deploy.precision import quantize_int8

    result = quantize_int8(digits.onnx, tmp_path / "digits.int8.onnx", calib_data=digits.root / "train", samples=128,
                           method="minmax", fp16_remainder=True)
    model = onnx.load(str(result.path))
    scales = [next(i for i in model.graph.initializer if i.name == n.input[1]).data_type
              for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert set(scales) == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _props(result.path)["resnet_deploy.fp16_remainder"] == "true"
    assert abs(_accuracy(result.path, digits) - digits.fp32_top1) <= 1.5


def test_auto_scores_every_method_and_keeps_the_best(digits, tmp_path) -> None:
    from resnet_deploy.precision import quantize_int8

    result = quantize_int8(digits.onnx, tmp_path / "digits.int8.onnx", calib_data=digits.root / "train", samples=256,
                           method="auto")
    scores = result.calibration.scores
    assert set(scores) == {"entropy", "minmax", "percentile"}
    # The best: the smallest top-1 drop on the labelled held-out images, then the highest agreement.
    def rank(score: dict) -> tuple:
        return (-max(0.0, -(score["top1_delta"] or 0.0)), score["agreement"])

    best = max(rank(score) for score in scores.values())
    assert rank(scores[result.calibration.method]) == best
    assert scores[result.calibration.method]["agreement"] == result.agreement
    for score in scores.values():  # every method's ranges were cached (the user's cache folder)
        assert Path(score["cache"]["path"]).is_file()


def test_calibration_cache_reused_then_rebuilt_when_model_or_images_change(digits, tmp_path, monkeypatch) -> None:
    import onnx
    from onnx import numpy_helper
    from PIL import Image

    from resnet_deploy.precision import quantize_int8

    calib = tmp_path / "calib"  # 40 images, all of them used (samples=64)
    for label in "0123":
        (calib / label).mkdir(parents=True)
        for image in sorted((digits.root / "test" / label).glob("*.png"))[:10]:
            shutil.copy(image, calib / label / image.name)
    source = tmp_path / "model.onnx"
    shutil.copy(digits.onnx, source)
    output = tmp_path / "model.int8.onnx"
    from resnet_deploy.precision.calibration import CACHE_ENV, cache_folder

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # this test's own cache folder
    def build() -> tuple[str, str]:
        result = quantize_int8(source, output, calib_data=calib, samples=64, method="minmax",
                               min_agreement=50.0)
        assert result.calibration.samples == 40 and result.check_data == "calibration images"
        return result.calibration.scores["minmax"]["cache"]["status"], result.sha256

    def caches() -> set[str]:
        return {p.name for p in cache_folder().glob("minmax-*.json")}

    assert build()[0] == "miss" and len(caches()) == 1
    status, sha = build()
    assert status == "hit"
    assert build() == ("hit", sha)  # the same ranges give the same model
    # Another output name (another target's build of the same model and images) finds the same cache.
    other = quantize_int8(source, tmp_path / "other.int8.onnx", calib_data=calib, samples=64, method="minmax",
                          min_agreement=50.0)
    assert other.calibration.scores["minmax"]["cache"]["status"] == "hit"

    model = onnx.load(str(source))  # the model changed: other weights at the same path
    init = next(i for i in model.graph.initializer if i.data_type == 1 and numpy_helper.to_array(i).ndim == 4)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(model, str(source))
    assert build()[0] == "miss" and len(caches()) == 2
    assert build()[0] == "hit"

    victim = sorted(calib.rglob("*.png"))[0]  # one calibration image changed
    Image.new("RGB", (SIZE, SIZE), (255, 255, 255)).save(victim)
    assert build()[0] == "miss" and len(caches()) == 3


def test_entropy_threshold_is_onnxruntimes() -> None:
    from onnxruntime.quantization.calibrate import HistogramCollector

    from resnet_deploy.precision.calibration import entropy_threshold

    rng = np.random.default_rng(0)
    for trial in range(4):
        collector = HistogramCollector("entropy", True, 256, 64, 99.99, "same")
        values = np.abs(rng.standard_normal(4000)) ** (1 + trial % 3) + rng.standard_normal(4000) * 0.1
        collector.collect({"t": values.astype(np.float32)})
        if trial % 2:
            collector.collect({"t": (rng.standard_normal(2000) * 3).astype(np.float32)})  # widens the histogram
        histogram = collector.histogram_dict["t"]
        for bins in (64, 128):
            assert entropy_threshold(histogram, bins) == collector.get_entropy_threshold(histogram, bins)


def test_random_calibration_is_recorded(digits, tmp_path) -> None:
    from resnet_deploy.precision import quantize_int8

    result = quantize_int8(digits.onnx, tmp_path / "r.int8.onnx", calib_data=None, samples=16, method="minmax",
                           random_calibration=True)
    assert result.gate is None and result.calibration.random and result.check_data == "random"
    assert json.loads(_props(result.path)["resnet_deploy.calibration"])["random"] is True
    assert any("RANDOM" in w for w in result.warnings)


def test_bad_calibration_folders_say_why(digits, tmp_path) -> None:
    from resnet_deploy.errors import UsageError
    from resnet_deploy.precision import quantize_int8

    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    with pytest.raises(UsageError, match="calibration needs images"):
        quantize_int8(digits.onnx, tmp_path / "x.onnx", calib_data=empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match="a.png"):
        quantize_int8(digits.onnx, tmp_path / "x.onnx", calib_data=broken)
    with pytest.raises(UsageError, match="--calib-data"):
        quantize_int8(digits.onnx, tmp_path / "x.onnx", calib_data=None)
    assert not list(tmp_path.glob("x.onnx*"))


# --- the ONNX Runtime target --------------------------------------------------------------------------------


def test_onnxruntime_artifact_int8(digits, tmp_path) -> None:
    import onnx

    from resnet_deploy.artifacts import artifact_card, manifest_path
    from resnet_deploy.errors import UsageError
    from resnet_deploy.precision import quantize_int8, read_source
    from resnet_deploy.targets.onnxruntime import build_onnxruntime_artifact

    int8 = quantize_int8(digits.onnx, tmp_path / "digits.int8.onnx", calib_data=digits.root / "train", samples=128,
                         method="minmax")
    result = build_onnxruntime_artifact(int8.path, tmp_path / "digits.int8.cpu.onnx", check_images=digits.images[:64])
    assert result.s8_to_u8_pairs > 0 and result.check["passed"] and result.check["agreement"] >= 99.0
    assert abs(_accuracy(result.path, digits) - _accuracy(int8.path, digits)) <= 0.5
    model = onnx.load(str(result.path))
    assert all(i.domain in ("", "ai.onnx") for i in model.graph.node)  # portable: standard operators only
    props = _props(result.path)
    assert props["resnet_deploy.precision"] == "int8" and props["resnet_deploy.artifact"] == "onnxruntime-cpu"
    manifest = json.loads(manifest_path(result.path).read_text())
    assert manifest["precision"] == "int8" and manifest["calibration"]["method"] == "minmax"
    assert manifest["source_onnx"]["sha256"] == int8.sha256 and manifest["fp32_source_sha256"] == int8.source_sha256
    assert manifest["versions"].get("onnxruntime") or manifest["versions"].get("onnxruntime-gpu")
    assert artifact_card(result.path).arch == "resnet20"
    with pytest.raises(UsageError, match="artifact"):  # never a source for another precision or target
        read_source(result.path)


def test_uint8_rewrite_is_exact(digits, tmp_path) -> None:
    import onnx

    from resnet_deploy.onnx_check import run_logits, session
    from resnet_deploy.precision import quantize_int8
    from resnet_deploy.targets.onnxruntime import int8_activations_to_uint8

    int8 = quantize_int8(digits.onnx, tmp_path / "a.int8.onnx", calib_data=digits.root / "train", samples=64,
                         method="minmax").path
    model = onnx.load(str(int8))
    assert int8_activations_to_uint8(model) > 0
    rewritten = tmp_path / "b.onnx"
    onnx.save(model, str(rewritten))
    # Without graph optimizations both run the Q/DQ nodes as written: identical values.
    a = run_logits(session(int8, level="basic"), digits.images[:32])
    b = run_logits(session(rewritten, level="basic"), digits.images[:32])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


# --- the library build pipeline -------------------------------------------------------------------------------


def test_build_reports_through_the_listener_and_writes_one_manifest(digits, tmp_path) -> None:
    from resnet_deploy.artifacts import MANIFEST_SCHEMA_VERSION, Artifact
    from resnet_deploy.builder import BuildListener, BuildRequest, build

    source = tmp_path / "digits.onnx"
    shutil.copy(digits.onnx, source)
    lines: list[tuple[str, str]] = []
    phases: set[str] = set()
    listener = BuildListener(info=lambda m: lines.append(("info", m)), warn=lambda m: lines.append(("warn", m)),
                             progress=lambda phase, done, total: phases.add(phase))
    report = build(BuildRequest(onnx=source, precision="int8", calib_data=digits.root / "train", calib_samples=64,
                                calib_method="minmax", target="onnxruntime"), listener)
    assert report.output == tmp_path / "digits.int8.cpu.onnx" and report.output.is_file()
    assert ("info", "target: onnxruntime (asked for)") in lines and any("calibrate" in p for p in phases)
    assert report.precision_onnx is None and report.precision_result.agreement >= 95
    assert [row[0] for row in report.artifact.summary] == ["artifact check"]
    assert [row[0] for row in report.summary()] == ["target", "source", "precision", "vs FP32", "gate", "calibration",
                                                     "CPU", "artifact check", "kernels vs Q/DQ", "artifact gate",
                                                     "load check", "artifact", "manifest"]
    artifact = Artifact(report.output)
    manifest = artifact.manifest
    assert manifest is not None and manifest.backend == "onnxruntime"
    # The artifact was judged on this CPU on the held-out images the precision step used, and says which CPU.
    from resnet_deploy.precision.isa import this_cpu, weight_bits_for

    assert manifest.isa["class"] == this_cpu().cpu_class
    assert manifest.isa["weight_bits"] == weight_bits_for(this_cpu().cpu_class)
    assert manifest.artifact_check["images"] == report.precision_result.check_images
    assert manifest.artifact_check["here"]["passed"] and manifest.self_check["inputs"]["count"] == 8
    assert manifest.schema_version == MANIFEST_SCHEMA_VERSION and manifest.precision == artifact.precision == "int8"
    assert manifest.precision_check["agreement"] == report.precision_result.agreement
    assert artifact.card.arch == "resnet20"


def test_one_place_resolves_targets(digits) -> None:
    from resnet_deploy.errors import BackendUnavailable, UsageError
    from resnet_deploy.targets.base import resolve_target, target_usable

    target, reason = resolve_target("auto")
    assert reason.startswith("auto: ") and target_usable(target.name)[0]
    assert resolve_target("onnxruntime")[1] == "asked for"
    if not target_usable("tensorrt")[0]:
        with pytest.raises(BackendUnavailable, match="TensorRT is not available"):
            resolve_target("tensorrt")
    assert not target_usable("tensorrt", "cpu")[0] and not target_usable("openvino", "cuda")[0]
    with pytest.raises(UsageError, match="--target"):
        resolve_target("tvm")


# --- the CLI ---------------------------------------------------------------------------------------------------


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_cli_int8_onnxruntime_json(cli, digits, tmp_path) -> None:
    source = tmp_path / "digits.onnx"
    shutil.copy(digits.onnx, source)
    result = cli("build-engine", "--onnx", str(source), "--int8", "--calib-data", str(digits.root / "train"),
                 "--calib-samples", "128", "--calib-method", "minmax", "--target", "onnxruntime", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["target"] == "onnxruntime" and document["precision"] == "int8"
    assert document["precision_check"]["agreement"] >= 95
    artifact = tmp_path / "digits.int8.cpu.onnx"
    assert document["output"] == str(artifact) and document["artifact"]["check"]["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["digits.onnx", artifact.name, artifact.name + ".json"])
    assert "calibrate minmax" in result.stderr  # the progress bar
    # The precision model was a temporary file: nothing in the document points into a deleted folder.
    assert document["precision_onnx"] is None and document["precision_check"]["path"] is None


def test_cli_usage_errors_write_nothing(cli, digits, tmp_path) -> None:
    source = tmp_path / "digits.onnx"
    shutil.copy(digits.onnx, source)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (("--onnx", str(source), "--int8", "--target", "onnxruntime"), "--calib-data"),
        (("--onnx", str(source), "--int8", "--calib-data", str(empty), "--target", "onnxruntime"), "needs images"),
        (("--int8", "--calib-data", str(empty)), "name a model"),
        (("--onnx", str(source), "--arch", "resnet20"), "not both"),
        (("--onnx", str(source), "--bf16", "--target", "onnxruntime"), "OpenVINO"),
        (("--onnx", str(source), "--fp16", "--target", "tensorrt"), "TensorRT is not available"),
        (("--onnx", str(source), "--calib-method", "kl", "--int8", "--calib-data", str(empty)), "--calib-method"),
        (("--onnx", str(tmp_path / "missing.onnx")), "no such"),
    ]
    for args, expected in cases:
        result = cli("build-engine", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert expected in _one_error_line(result), (args, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.onnx", "empty"]


def test_cli_failed_gate_exits_1_and_writes_nothing(cli, digits, tmp_path) -> None:
    source = tmp_path / "digits.onnx"
    shutil.copy(digits.onnx, source)
    result = cli("build-engine", "--onnx", str(source), "--fp16", "--calib-data", str(digits.root / "test"),
                 "--min-agreement", "100.01", "--target", "onnxruntime")
    assert result.returncode == 1
    assert "gate" in _one_error_line(result)
    assert [p.name for p in tmp_path.iterdir()] == ["digits.onnx"]


def test_cli_exports_first_and_says_which_target(cli, tmp_path) -> None:
    output = tmp_path / "out" / "r20.int8.cpu.onnx"
    result = cli("build-engine", "--arch", "resnet20", "--int8", "--random-calibration", "--calib-samples", "8",
                 "--calib-method", "minmax", "--output", str(output), "--target", "onnxruntime")
    assert result.returncode == 0, result.stderr
    assert "target: onnxruntime (asked for)" in result.stderr
    assert (tmp_path / "out" / "resnet20.onnx").is_file() and output.is_file()
    assert (tmp_path / "out" / "r20.int8.cpu.onnx.json").is_file()
    assert "RANDOM" in result.stderr
    auto = cli("build-engine", "--onnx", str(tmp_path / "out" / "resnet20.onnx"), "--min-batch", "1", "--json")
    # Whatever auto picks on this machine, it says which and why, and TensorRT flags are never silently dropped.
    assert auto.returncode == 0, auto.stderr
    chosen = json.loads(auto.stdout)["target"]
    assert f"target: {chosen} (auto: " in auto.stderr
    assert chosen == "tensorrt" or "--min-batch ignored" in auto.stderr
    assert Path(json.loads(auto.stdout)["output"]).is_file()


# --- real data (slow) --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cifar10_resnet20_fp16_and_int8(tmp_path, cifar10_dir) -> None:
    """With a CIFAR-10 ResNet-20 card in $RESNET_DEPLOY_CIFAR_CARD: FP16 within 0.1 and INT8 within 0.5 point."""
    import os

    from resnet_deploy.checkpoints import load_model
    from resnet_deploy.data import eval_transform, open_dataset
    from resnet_deploy.export import export_onnx
    from resnet_deploy.onnx_check import run_logits, session
    from resnet_deploy.precision import convert_fp16, quantize_int8

    card_path = os.environ.get("RESNET_DEPLOY_CIFAR_CARD")
    if not card_path or not Path(card_path).is_file():
        pytest.skip("set RESNET_DEPLOY_CIFAR_CARD to a CIFAR-10 ResNet-20 model card trained on these JPEGs")
    loaded = load_model(card_path)
    fp32 = export_onnx(loaded, tmp_path / "resnet20.onnx").path
    test = open_dataset(cifar10_dir, split="test")
    transform = eval_transform(loaded.card.preprocessing)
    images = np.stack([transform(test.load(i)).numpy() for i in range(len(test))]).astype(np.float32)
    labels = np.array(test.labels)

    def top1(path: Path) -> float:
        return _top1(run_logits(session(path), images, batch=256), labels)

    base = top1(fp32)
    fp16 = convert_fp16(fp32, tmp_path / "resnet20.fp16.onnx", check_images=images[:512]).path
    int8 = quantize_int8(fp32, tmp_path / "resnet20.int8.onnx", calib_data=cifar10_dir / "train", method="auto").path
    assert abs(top1(fp16) - base) <= 0.1
    assert base - top1(int8) <= 0.5
