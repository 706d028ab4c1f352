"""`triton-repo`: every config parses with Triton's own schema and matches the artifact it serves; the JPEG
ensemble's preprocessing gives the very tensors validate feeds, without torch; what Triton would refuse is refused
here (the OpenVINO backend's batch, warm-ups, TensorRT versions, paths and hashes of the input files).

These tests check the configs with tritonclient's `model_config_pb2`; test_triton_server.py loads them in a real
server.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_deploy.checkpoints import random_model
from resnet_deploy.errors import UsageError

pytest.importorskip("tritonclient.grpc", reason="the Triton schema is an optional extra (resnet-deploy[triton])")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from resnet_deploy.serving.model_io import read_artifact_io  # noqa: E402
from resnet_deploy.serving.triton import RepositoryOptions, check_config, config_text, write_repository  # noqa: E402
from resnet_deploy.serving.triton_preprocess import preprocess  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return random_model("resnet20", seed=0)


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory) -> dict[str, Path]:
    """An FP32 ONNX (dynamic batch), a static-batch ONNX, the ONNX Runtime INT8 artifact, and, with OpenVINO, its
    INT8 IR."""
    from resnet_deploy.export import export_onnx
    from resnet_deploy.precision import quantize_int8
    from resnet_deploy.targets.onnxruntime import build_onnxruntime_artifact

    folder = tmp_path_factory.mktemp("triton-artifacts")
    fp32 = export_onnx(model, folder / "resnet20.onnx", verify=False).path
    static = export_onnx(model, folder / "resnet20.b4.onnx", batch=4, verify=False).path
    int8 = quantize_int8(fp32, folder / "resnet20.int8.onnx", calib_data=None, samples=8, random_calibration=True,
                         check_samples=8).path
    found = {"fp32": Path(fp32), "static": Path(static), "int8": Path(int8),
             "int8_cpu": Path(build_onnxruntime_artifact(int8, folder / "resnet20.int8.cpu.onnx").path)}
    try:
        import openvino  # noqa: F401
    except ImportError:
        return found
    from resnet_deploy.targets.openvino import build_openvino_ir

    found["openvino_int8"] = Path(build_openvino_ir(int8, folder / "resnet20.int8.xml", precision="int8",
                                                    card=model.card).path)
    return found


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_repository_of_onnx_int8_and_openvino(model, artifacts, tmp_path):
    chosen = [artifacts["fp32"], artifacts["int8_cpu"]] + ([artifacts["openvino_int8"]]
                                                           if "openvino_int8" in artifacts else [])
    repo = tmp_path / "repo"
    report = write_repository([read_artifact_io(p) for p in chosen], repo, RepositoryOptions(instances=2))
    names = {m["name"] for m in report.models}
    assert {"resnet20", "resnet20_int8_cpu", "resnet20_jpeg", "resnet20_preprocess"} <= names
    for folder in repo.iterdir():  # every config parses with Triton's schema
        assert _parse(folder / "config.pbtxt").name == folder.name
    for path in chosen:
        name = path.name[: -len(path.suffix)].replace(".", "_")
        config = _parse(repo / name / "config.pbtxt")
        openvino = path.suffix == ".xml"
        assert config.max_batch_size == (0 if openvino else 32)
        assert [(t.name, list(t.dims), t.data_type) for t in config.input] == [
            ("input", [-1, 3, 32, 32] if openvino else [3, 32, 32], 1 + 10)]
        assert [(t.name, list(t.dims)) for t in config.output] == [("logits", [-1, 10] if openvino else [10])]
        assert config.output[0].label_filename == "labels.txt"
        assert (repo / name / "labels.txt").read_text().splitlines() == list(model.card.class_names)
        assert config.HasField("dynamic_batching") != openvino
        if not openvino:
            assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
        assert config.instance_group[0].count == 2
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        warmup = config.model_warmup[0]
        assert warmup.batch_size == 1 and warmup.inputs["input"].random_data
        assert list(warmup.inputs["input"].dims) == ([1, 3, 32, 32] if openvino else [3, 32, 32])
        model_file = repo / name / "1" / config.default_model_filename
        assert model_file.read_bytes() == path.read_bytes()
        if path.suffix == ".xml":
            assert config.backend == "openvino"
            assert (repo / name / "1" / "model.bin").read_bytes() == path.with_suffix(".bin").read_bytes()
        else:
            assert config.platform == "onnxruntime_onnx"
    if "openvino_int8" in artifacts:  # the ensemble over the unbatched OpenVINO model is unbatched too
        ov_ensemble = _parse(repo / "resnet20_int8_jpeg" / "config.pbtxt")
        assert ov_ensemble.max_batch_size == 0 and list(ov_ensemble.input[0].dims) == [-1]
        ov_pre = _parse(repo / "resnet20_int8_preprocess" / "config.pbtxt")
        assert list(ov_pre.output[0].dims) == [-1, 3, 32, 32]
    assert "docker run --rm" in report.serve and "--gpus" not in report.serve  # every model is KIND_CPU
    ensemble = _parse(repo / "resnet20_jpeg" / "config.pbtxt")
    assert ensemble.platform == "ensemble"
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["resnet20_preprocess", "resnet20"]
    assert steps[0].output_map["input"] == steps[1].input_map["input"]
    pre = _parse(repo / "resnet20_preprocess" / "config.pbtxt")
    assert json.loads(pre.parameters["preprocessing"].string_value) == model.card.preprocessing.to_dict()
    assert (repo / "resnet20_preprocess" / "1" / "model.py").read_text().startswith('"""Triton Python-backend')
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging folders left


def _jpegs() -> list[bytes]:
    """Real handwritten digits (scikit-learn), upscaled to several sizes and aspect ratios, as JPEG bytes."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[:4]
    encoded = []
    for digit, size in zip(digits, [(32, 32), (300, 257), (64, 120), (500, 333)], strict=True):
        gray = Image.fromarray(np.uint8(digit * 255 / 16)).resize(size, Image.BILINEAR)
        rgb = Image.merge("RGB", (gray, gray.transpose(Image.FLIP_LEFT_RIGHT), gray))
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


@pytest.mark.parametrize("preprocessing", [
    {"input_size": 32, "resize_size": None, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26],
     "interpolation": "bilinear"},
    {"input_size": 224, "resize_size": 256, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "interpolation": "bicubic"},
])
def test_ensemble_preprocessing_is_validates_transform(preprocessing):
    from resnet_deploy.card import Preprocessing
    from resnet_deploy.data import eval_transform

    transform = eval_transform(Preprocessing.from_dict(preprocessing))
    for encoded in _jpegs():
        with Image.open(io.BytesIO(encoded)) as image:
            expected = transform(image.convert("RGB")).numpy()
        assert np.array_equal(preprocess(encoded, preprocessing), expected)


def test_refusals(artifacts, tmp_path):
    static = read_artifact_io(artifacts["static"])
    with pytest.raises(UsageError, match="static batch of 4"):
        write_repository([static], tmp_path / "r", RepositoryOptions(max_batch=8))
    report = write_repository([static], tmp_path / "r", RepositoryOptions())  # served unbatched, no ensemble
    config = _parse(tmp_path / "r" / "resnet20_b4" / "config.pbtxt")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [4, 3, 32, 32]
    assert any("static batch" in note for note in report.notes)
    with pytest.raises(UsageError, match="already holds resnet20_b4"):
        write_repository([static], tmp_path / "r", RepositoryOptions())

    fp32 = read_artifact_io(artifacts["fp32"])
    good = (tmp_path / "r2")
    write_repository([fp32], good, RepositoryOptions(ensemble=False))
    text = (good / "resnet20" / "config.pbtxt").read_text()
    with pytest.raises(UsageError, match="named 'images' in the config but 'input'"):
        check_config(text.replace('name: "input"', 'name: "images"'), fp32)
    with pytest.raises(UsageError, match="does not parse"):
        check_config(text + "\nno_such_field: 1\n", fp32)


def _plan_with_manifest(folder: Path, profile: dict[str, int], tensorrt: str = "10.13.0",
                        version_compatible: bool = False) -> Path:
    """A plan file and its manifest in the documented format; only the manifest is read (no TensorRT here)."""
    plan = folder / "resnet20.fp16.plan"
    plan.write_bytes(b"not read by triton-repo")
    manifest = {"format": "resnet-deploy.tensorrt-engine", "tensorrt_version": tensorrt,
                "build_options": {"version_compatible": version_compatible},
                "gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"}, "precision": "fp16",
                "batch_profile": profile, "input": {"name": "input", "shape": [-1, 3, 32, 32], "dtype": "FLOAT"},
                "output": {"name": "logits", "shape": [-1, 10], "dtype": "FLOAT"}}
    plan.with_name(plan.name + ".json").write_text(json.dumps(manifest))
    return plan


def test_tensorrt_plan_config_follows_its_manifest(tmp_path):
    plan = read_artifact_io(_plan_with_manifest(tmp_path, {"min": 1, "opt": 8, "max": 16}))
    with pytest.raises(UsageError, match="beyond the plan's profile"):
        write_repository([plan], tmp_path / "r", RepositoryOptions(max_batch=64))
    write_repository([plan], tmp_path / "r", RepositoryOptions(ensemble=False))
    config = _parse(tmp_path / "r" / "resnet20_fp16" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16
    assert dict(config.cc_model_filenames) == {"9.0": "model.plan"}
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    text = (tmp_path / "r" / "resnet20_fp16" / "config.pbtxt").read_text()
    with pytest.raises(UsageError, match="compute capability 9.0"):
        check_config(text.replace('key: "9.0"', 'key: "8.0"'), plan)
    (tmp_path / "late").mkdir()
    late = read_artifact_io(_plan_with_manifest(tmp_path / "late", {"min": 4, "opt": 8, "max": 16}))
    with pytest.raises(UsageError, match="--min-batch 1"):
        write_repository([late], tmp_path / "r3", RepositoryOptions())
    assert config_text(config) == text


def test_cli_json_and_missing_extra(artifacts, tmp_path):
    done = subprocess.run([sys.executable, "-m", "resnet_deploy", "triton-repo", str(artifacts["fp32"]), "-o",
                           str(tmp_path / "repo"), "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert {m["name"] for m in document["models"]} == {"resnet20", "resnet20_preprocess", "resnet20_jpeg"}
    code = ("import sys; sys.modules['tritonclient'] = None; sys.modules['tritonclient.grpc'] = None\n"
            f"from resnet_deploy.cli import main; main(['triton-repo', {str(artifacts['fp32'])!r}, '-o', "
            f"{str(tmp_path / 'repo2')!r}])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        "error: Triton's model-config schema comes with tritonclient: pip install 'resnet-deploy[triton]'"]
    assert not (tmp_path / "repo2").exists()


def test_preprocessing_needs_no_torch(tmp_path):
    """The stock tritonserver image's Python has numpy and no torch/torchvision: the preprocessing model imports
    neither (both blocked here), and gives validate's tensors all the same."""
    from resnet_deploy.card import Preprocessing
    from resnet_deploy.data import eval_transform

    preprocessing = {"input_size": 24, "resize_size": 28, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
                     "interpolation": "bilinear"}
    images = _jpegs()
    for i, encoded in enumerate(images):
        (tmp_path / f"{i}.jpg").write_bytes(encoded)
    code = ("import sys, json, numpy as np\n"
            "for name in ('torch', 'torchvision', 'resnet_deploy'): sys.modules[name] = None\n"
            f"sys.path.insert(0, {str(REPO / 'resnet_deploy' / 'serving')!r})\n"
            "import triton_preprocess as t\n"
            f"p = json.loads({json.dumps(preprocessing)!r})\n"
            f"for i in range({len(images)}):\n"
            f"    np.save({str(tmp_path)!r} + f'/{{i}}.npy', t.preprocess(open({str(tmp_path)!r} + f'/{{i}}.jpg', "
            "'rb').read(), p))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    transform = eval_transform(Preprocessing.from_dict(preprocessing))
    for i, encoded in enumerate(images):
        with Image.open(io.BytesIO(encoded)) as image:
            assert np.array_equal(np.load(tmp_path / f"{i}.npy"), transform(image.convert("RGB")).numpy())


def test_warmups_are_batch_one_without_free_dims(model, artifacts, tmp_path):
    """Warm-up batch_size is 1 even for an unbatched config (Triton skips 0), and no dim is -1: a free batch is 1,
    a free height/width the card's size."""
    import onnx

    write_repository([read_artifact_io(artifacts["static"])], tmp_path / "r", RepositoryOptions())
    warmup = _parse(tmp_path / "r" / "resnet20_b4" / "config.pbtxt").model_warmup[0]
    assert warmup.batch_size == 1 and list(warmup.inputs["input"].dims) == [4, 3, 32, 32]

    free = onnx.load(str(artifacts["fp32"]))
    for dim in free.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "side"
    onnx.save(free, str(tmp_path / "free.onnx"))
    io_free = read_artifact_io(tmp_path / "free.onnx")
    assert io_free.input.shape == (-1, 3, -1, -1)
    write_repository([io_free], tmp_path / "r", RepositoryOptions(ensemble=False))
    config = _parse(tmp_path / "r" / "free" / "config.pbtxt")
    assert list(config.input[0].dims) == [3, -1, -1]
    assert config.model_warmup[0].batch_size == 1
    assert list(config.model_warmup[0].inputs["input"].dims) == [3, 32, 32]  # the card's input size

    text = (tmp_path / "r" / "free" / "config.pbtxt").read_text()
    with pytest.raises(UsageError, match="batch_size 0"):
        check_config(text.replace("batch_size: 1", "batch_size: 0"), io_free)
    with pytest.raises(UsageError, match="free dim"):
        check_config(text.replace("dims: 32\n      dims: 32", "dims: -1\n      dims: 32"), io_free)


def test_tensorrt_plan_names_its_tensorrt_and_triton(tmp_path):
    plan = _plan_with_manifest(tmp_path, {"min": 1, "opt": 8, "max": 16}, tensorrt="10.8.0.43")
    report = write_repository([read_artifact_io(plan)], tmp_path / "r", RepositoryOptions(ensemble=False))
    assert any("TensorRT 10.8.0.43" in note and "Triton 25.01" in note for note in report.notes)
    assert "--gpus all" in report.serve and "tritonserver:25.01-py3" in report.serve
    assert "version-compatible" not in report.serve

    (tmp_path / "vc").mkdir()
    compatible = _plan_with_manifest(tmp_path / "vc", {"min": 1, "opt": 8, "max": 16}, tensorrt="10.13.3.9",
                                     version_compatible=True)
    report = write_repository([read_artifact_io(compatible)], tmp_path / "r2", RepositoryOptions(ensemble=False))
    assert report.serve.endswith("--backend-config=tensorrt,version-compatible=true")
    assert any("version-compatible plan built with TensorRT 10.13.3.9" in note for note in report.notes)


def test_openvino_config_is_checked_unbatched(artifacts, tmp_path):
    if "openvino_int8" not in artifacts:
        pytest.skip("OpenVINO is not installed")
    ir = read_artifact_io(artifacts["openvino_int8"])
    report = write_repository([ir], tmp_path / "r", RepositoryOptions(max_batch=8))
    assert any("--max-batch 8 not used" in note for note in report.notes)
    text = (tmp_path / "r" / "resnet20_int8" / "config.pbtxt").read_text()
    batched = text.replace("dims: -1\n  dims: 3", "dims: 3").replace("dims: -1\n  dims: 10", "dims: 10")
    with pytest.raises(UsageError, match="OpenVINO backend"):
        check_config("max_batch_size: 8\n" + batched, ir)


# --- issue 27: inputs the repository must not read, delete or mislabel ---------------------------------------


def test_external_data_symlink_refused_and_subfolder_works(artifacts, tmp_path):
    import onnx

    model = onnx.load(str(artifacts["fp32"]))
    (tmp_path / "m" / "weights").mkdir(parents=True)
    onnx.save(model, str(tmp_path / "m" / "x.onnx"), save_as_external_data=True, location="weights/w.bin",
              size_threshold=0)
    io_sub = read_artifact_io(tmp_path / "m" / "x.onnx")
    write_repository([io_sub], tmp_path / "repo", RepositoryOptions(ensemble=False))
    copied = tmp_path / "repo" / "x" / "1" / "weights" / "w.bin"
    assert copied.read_bytes() == (tmp_path / "m" / "weights" / "w.bin").read_bytes()

    (tmp_path / "secret.bin").write_bytes((tmp_path / "m" / "weights" / "w.bin").read_bytes())
    (tmp_path / "m" / "weights" / "w.bin").unlink()
    (tmp_path / "m" / "weights" / "w.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(UsageError, match="symbolic link|outside the model.s folder"):
        read_artifact_io(tmp_path / "m" / "x.onnx")


def test_force_never_deletes_its_input_and_names_are_plain(artifacts, tmp_path):
    repo = tmp_path / "repo"
    write_repository([read_artifact_io(artifacts["fp32"])], repo, RepositoryOptions(ensemble=False))
    inside = repo / "resnet20" / "1" / "model.onnx"
    with pytest.raises(UsageError, match="inside the model folder"):
        write_repository([read_artifact_io(inside)], repo, RepositoryOptions(name="resnet20", force=True,
                                                                             ensemble=False))
    assert inside.is_file()
    for bad in (".", "..", "../escape", "a/b", ".hidden", ""):
        with pytest.raises(UsageError, match="--name"):
            write_repository([read_artifact_io(artifacts["fp32"])], repo, RepositoryOptions(name=bad, force=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    assert (repo / "resnet20" / "config.pbtxt").is_file()


def test_manifest_hashes_are_checked(artifacts, tmp_path):
    import shutil

    plan = _plan_with_manifest(tmp_path, {"min": 1, "opt": 8, "max": 16})
    manifest = json.loads(plan.with_name(plan.name + ".json").read_text())
    manifest["sha256"] = "0" * 64  # names another plan
    plan.with_name(plan.name + ".json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="changed since its manifest"):
        read_artifact_io(plan)
    if "openvino_int8" not in artifacts:
        return
    folder = tmp_path / "ov"
    folder.mkdir()
    source = artifacts["openvino_int8"]
    for file in (source, source.with_suffix(".bin"), source.with_name(source.name + ".json")):
        shutil.copy(file, folder / file.name)
    weights = folder / source.with_suffix(".bin").name
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="changed since its manifest"):
        read_artifact_io(folder / source.name)


def test_class_name_with_a_line_break_refused(artifacts, tmp_path):
    import dataclasses

    io_fp32 = read_artifact_io(artifacts["fp32"])
    names = list(io_fp32.card.class_names)
    names[3] = "cat\nzebra"
    bad = dataclasses.replace(io_fp32, card=dataclasses.replace(io_fp32.card, class_names=names))
    with pytest.raises(UsageError, match="class 3 .* line break"):
        write_repository([bad], tmp_path / "r", RepositoryOptions())
    assert not (tmp_path / "r").exists()


def test_cli_name_and_backend_refusals(artifacts, tmp_path):
    for args, expected in ((["--name", "../escape"], "--name '../escape'"),
                           (["--backend", "pytorch"], "--backend 'pytorch'")):
        done = subprocess.run([sys.executable, "-m", "resnet_deploy", "triton-repo", str(artifacts["fp32"]), "-o",
                               str(tmp_path / "repo"), *args], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], done.stderr
        assert "Traceback" not in done.stderr


def test_unreadable_openvino_ir_is_one_error(tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    (tmp_path / "m.xml").write_text("<net><layers><broken")
    (tmp_path / "m.bin").write_bytes(b"\0" * 16)
    done = subprocess.run([sys.executable, "-m", "resnet_deploy", "triton-repo", str(tmp_path / "m.xml"), "-o",
                           str(tmp_path / "repo")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not a readable OpenVINO IR" in errors[0], done.stderr
