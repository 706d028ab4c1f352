"""The AOTInductor target and engine: a real `.pt2` compile of the digits card (`trained_digits`), opened as
validate and bench open it, held to the eager PyTorch model, refused where it cannot apply.

One compile (about a minute on two cores) serves the default tests: `build-engine --target aotinductor` on the
card with the digits test folder as its gate images, so the package is judged by the build's FP32 gate on this
CPU and gets its manifest and self-check. bf16 and ResNet-50 are `slow`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from resnet_deploy.targets.aotinductor import aotinductor_usable

_USABLE, _WHY = aotinductor_usable()
pytestmark = pytest.mark.skipif(not _USABLE, reason=f"AOTInductor cannot compile here: {_WHY}")


def _digits_images(trained_digits: dict, count: int = 60) -> tuple[np.ndarray, np.ndarray]:
    from resnet_deploy.data import open_dataset, sample_labelled

    return sample_labelled(open_dataset(trained_digits["data"]), trained_digits["model_card"].preprocessing, count, 0)


def _eager(trained_digits: dict, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return trained_digits["model"].eval()(torch.from_numpy(images)).numpy()


@pytest.fixture(scope="module")
def package(trained_digits: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("aoti") / "digits.pt2"
    result = run_cli("build-engine", "--checkpoint", str(trained_digits["card"]), "--target", "aotinductor",
                     "--calib-data", str(trained_digits["data"]), "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["target"] == "aotinductor" and report["precision"] == "fp32"
    assert report["artifact_check_here"]["passed"] and report["artifact_check_here"]["here"] is not None
    return out


def test_package_computes_what_pytorch_computes(package: Path, trained_digits: dict) -> None:
    from engines.aotinductor_engine import AOTInductorEngine

    images, labels = _digits_images(trained_digits)
    reference = _eager(trained_digits, images)
    with AOTInductorEngine(package) as engine:
        assert engine.precision == "fp32" and engine.device == "cpu"
        assert engine.input.shape == (None, 3, 16, 16) and engine.output.shape == (None, 10)
        whole = engine.infer(images)
        one = engine.infer(images[:1])  # the batch is dynamic: 1, 7 and 60 images run on one package
        seven = engine.infer(images[1:8])
    assert whole.dtype == np.float32 and whole.shape == (len(images), 10)
    assert np.max(np.abs(whole - reference)) < 1e-3 * max(1.0, float(np.max(np.abs(reference))))
    assert np.array_equal(whole.argmax(1), reference.argmax(1))
    np.testing.assert_allclose(np.concatenate([one, seven]), whole[:8], rtol=1e-4, atol=1e-4)
    assert (whole.argmax(1) == labels).mean() > 0.8  # the card learned the digits, and so did the package


def test_engine_contract_edges(package: Path) -> None:
    from engines.aotinductor_engine import AOTInductorEngine
    from engines.base import EngineError, EngineInputError

    engine = AOTInductorEngine(package, threads=1)
    batch = np.random.default_rng(0).standard_normal((4, 3, 16, 16), dtype=np.float32)
    with pytest.raises(EngineInputError, match="float32"):
        engine.infer(batch.astype(np.float64))
    with pytest.raises(EngineInputError, match="expects shape"):
        engine.infer(batch[:, :, :8])
    run = engine.prepare_run(batch, copy_free=True)
    assert run.copies == "excluded" and run.input is not None and run() > 0
    run.input[:] = 0  # writing the shared host array changes what the bound run reads, without a copy
    assert engine.describe()["compiled_for"] == "cpu" and engine.describe()["cpu_isa"]
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.infer(batch)


def test_manifest_names_the_package_and_its_card(package: Path, trained_digits: dict) -> None:
    from resnet_deploy.artifacts import Artifact
    from resnet_deploy.atomic import sha256_file

    manifest = json.loads(package.with_name(package.name + ".json").read_text())
    assert manifest["backend"] == "aotinductor" and manifest["format"] == "resnet-deploy/aotinductor-package"
    assert manifest["sha256"] == sha256_file(package) and manifest["precision"] == "fp32"
    assert manifest["source_onnx"]["kind"] == "model card"
    assert manifest["source_onnx"]["sha256"] == sha256_file(trained_digits["card"])
    assert manifest["compiled_for"] == "cpu" and manifest["compile_seconds"] > 0
    assert manifest["self_check"]["tolerance"] > 0 and manifest["isa"]["class"]  # the build's gate recorded both
    assert "--checkpoint" in manifest["isa"]["rebuild"] and "--target aotinductor" in manifest["isa"]["rebuild"]
    assert manifest["artifact_check"]["here"]["passed"]
    artifact = Artifact(package)
    assert artifact.card.class_names == trained_digits["model_card"].class_names and artifact.precision == "fp32"


def test_validate_and_inspect_take_the_package(package: Path, trained_digits: dict) -> None:
    result = run_cli("validate", str(trained_digits["card"]), str(package), "--data", str(trained_digits["data"]),
                     "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {Path(r["artifact"]).name: r for r in json.loads(result.stdout)["results"]}
    row = rows[package.name]
    assert row["backend"] == "aotinductor" and row["passed"] and row["agreement"] == 100.0
    verify = run_cli("inspect", str(package), "--verify")
    assert verify.returncode == 0, verify.stderr[-2000:]


def test_triton_repo_serves_the_package_through_the_python_backend(package: Path, tmp_path: Path) -> None:
    native = run_cli("triton-repo", str(package), "-o", str(tmp_path / "native"))
    assert native.returncode != 0 and "--backend python" in native.stderr.strip().splitlines()[-1]
    result = run_cli("triton-repo", str(package), "-o", str(tmp_path / "repo"), "--backend", "python",
                     "--no-ensemble")
    assert result.returncode == 0, result.stderr[-2000:]
    model = tmp_path / "repo" / package.stem
    assert (model / "1" / package.name).read_bytes() == package.read_bytes()
    assert (model / "1" / f"{package.name}.json").is_file() and (model / "1" / "model.py").is_file()
    assert 'backend: "python"' in (model / "config.pbtxt").read_text()


def test_a_package_for_another_device_is_refused(package: Path) -> None:
    import torch

    from engines.aotinductor_engine import AOTInductorEngine
    from engines.base import EngineError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU package's refusal on cuda is checked where there is none")
    with pytest.raises(EngineError, match="CUDA"):
        AOTInductorEngine(package, device="cuda")


def test_not_a_package_is_a_load_error(tmp_path: Path) -> None:
    from engines.aotinductor_engine import AOTInductorEngine
    from engines.base import ModelLoadError

    bad = tmp_path / "broken.pt2"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(ModelLoadError, match="cannot load"):
        AOTInductorEngine(bad)


def test_onnx_source_and_bad_requests_are_refused_before_any_work(trained_digits: dict, tmp_path: Path) -> None:
    from resnet_deploy.errors import UsageError
    from resnet_deploy.targets.aotinductor import build_aotinductor_package

    with pytest.raises(UsageError, match="model card"):
        build_aotinductor_package(trained_digits["onnx"], tmp_path / "x.pt2")
    with pytest.raises(UsageError, match="fp32 or bf16"):
        build_aotinductor_package(trained_digits["card"], tmp_path / "x.pt2", precision="int8")
    with pytest.raises(UsageError, match=r"\.pt2"):
        build_aotinductor_package(trained_digits["card"], tmp_path / "x.onnx")
    result = run_cli("build-engine", "--onnx", str(trained_digits["onnx"]), "--target", "aotinductor",
                     "-o", str(tmp_path / "x.pt2"))
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("error:") and "--checkpoint" in last
    assert "Traceback" not in result.stderr and not (tmp_path / "x.pt2").exists()
    result = run_cli("build-engine", "--checkpoint", str(trained_digits["card"]), "--target", "aotinductor",
                     "--fp16", "-o", str(tmp_path / "x.pt2"))
    assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_bf16_package_on_digits(trained_digits: dict, tmp_path: Path) -> None:
    from engines.aotinductor_engine import AOTInductorEngine
    from resnet_deploy.targets.aotinductor import build_aotinductor_package

    result = build_aotinductor_package(trained_digits["card"], tmp_path / "digits.bf16.pt2", precision="bf16")
    images, _ = _digits_images(trained_digits)
    reference = _eager(trained_digits, images)
    with AOTInductorEngine(result.path) as engine:
        assert engine.precision == "bf16"
        logits = engine.infer(images)
    assert logits.dtype == np.float32
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.95
    assert np.max(np.abs(logits - reference)) < 0.1 * float(np.max(np.abs(reference)))


@pytest.mark.slow
def test_resnet50_random_weights_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "resnet50.pt2"
    result = run_cli("build-engine", "--depth", "50", "--target", "aotinductor", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    assert manifest["card"]["arch"] == "resnet50" and manifest["source_onnx"]["random_weights"]
    check = manifest["artifact_check"].get("load_check") or manifest["artifact_check"]  # no gate images: the load check
    assert check["max_abs_logit_diff"] < 1e-2 and check["agreement"] == 100.0


def test_a_package_from_another_pytorch_or_a_wider_cpu_is_stale() -> None:
    import torch

    from engines.aotinductor_engine import _stale

    here = torch.__version__
    assert _stale({"resnet_deploy.torch": here, "AOTI_CPU_ISA": "AVX2"}, torch, "cpu") is None or \
        torch.backends.cpu.get_cpu_capability() == "DEFAULT"
    assert _stale({"resnet_deploy.torch": "2.0.0+cpu"}, torch, "cpu") is None  # an older compiler: runs here
    assert "PyTorch 99.0.0" in (_stale({"resnet_deploy.torch": "99.0.0"}, torch, "cpu") or "")
    if str(torch.backends.cpu.get_cpu_capability()).upper() == "AVX2":  # this machine: AVX2, no AVX-512
        assert "AVX512" in (_stale({"resnet_deploy.torch": here, "AOTI_CPU_ISA": "AVX512"}, torch, "cpu") or "")
    assert _stale({"resnet_deploy.torch": here, "AOTI_CPU_ISA": "AVX512"}, torch, "cuda") is None
