"""The demo end to end, in a reduced size: every step runs and the report has every section."""

from __future__ import annotations

import json
from pathlib import Path

from resnet_deploy.demo.data import DIGIT_CLASSES, write_digits_imagefolder


def test_digits_folder_is_a_stratified_imagefolder(tmp_path: Path) -> None:
    from resnet_deploy.data import open_dataset

    folder = write_digits_imagefolder(tmp_path / "digits")
    train, test = open_dataset(folder.root, split="train"), open_dataset(folder.root, split="test")
    assert train.class_names == DIGIT_CLASSES == test.class_names
    assert len(train) + len(test) == 1797 and len(test) == folder.test_images
    assert min(test.labels.count(c) for c in range(10)) >= 40  # every class in the test split
    assert train.load(0).size == (32, 32)
    mtime = (folder.root / "train").stat().st_mtime_ns
    write_digits_imagefolder(tmp_path / "digits")  # a complete copy is reused, not rewritten
    assert (folder.root / "train").stat().st_mtime_ns == mtime


def test_demo_end_to_end_reduced(tmp_path: Path, cli) -> None:
    out = tmp_path / "demo"
    # The demo's own training length: an 80-iteration model (81 % top-1) makes near-ties that flip under INT8, and
    # the INT8 build gate (98.5 % agreement on held-out images) then fails on noise, not on any layer.
    result = cli("demo", "--out", str(out), "--bench-duration", "0.2", "--bench-batch-sizes", "1", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["passed"] is True
    names = [step["name"] for step in summary["steps"]]
    assert names[:4] == ["train", "export", "fp16", "int8"] and names[-2:] == ["validate", "bench"]
    for artifact in summary["artifacts"]:
        assert Path(artifact).is_file()
    report = (out / "report.md").read_text()
    for heading in ("## 1. Data", "## 2. Training", "## 3. Accuracy and parity", "## 4. Latency and throughput",
                    "## 5. Artifacts and environment", "## 6. Reproduce by hand"):
        assert heading in report
    assert "![Training and test error" in report and (out / "train" / "curves.png").is_file()
    assert "(bench.png)" in report and (out / "bench.png").is_file()
    assert "resnet-deploy train --arch resnet20" in report and "resnet-deploy validate" in report
    assert "| onnxruntime | int8 |" in report and "PASS" in report
    # INT8 two ways: the fine-tuned model is built for ONNX Runtime (no calibration) and validated beside the
    # calibrated one
    assert "finetune-int8" in names and "qat-onnxruntime" in names
    assert any(a.endswith("resnet20.qat.int8.cpu.onnx") for a in summary["artifacts"])
    assert "`resnet20.qat.int8.cpu.onnx` | onnxruntime | int8 |" in report
    assert "side by side" in report and "onnxruntime: calibrated" in report
    assert "resnet-deploy finetune-int8" in report


def _demo_result(tmp_path: Path):
    from resnet_deploy.demo.run import DemoOptions, DemoResult, StepResult

    out = tmp_path / "demo"
    (out / "train").mkdir(parents=True)
    for name in ("last.safetensors", "best.safetensors"):
        (out / "train" / name).write_bytes(b"x" * 10)
    data = {"source": "scikit-learn digits", "classes": 10, "class_names": DIGIT_CLASSES, "train_images": 1557,
            "test_images": 240, "test_split": "test", "embedded": True, "name": "scikit-learn digits"}
    result = DemoResult(DemoOptions(out=out), data)
    train = {"iters": 300, "test_top1": 95.0, "test_top5": 99.0, "train_loss": 0.2, "images_per_s": 50.0,
             "checkpoint": str(out / "train" / "last.safetensors"), "best_top1": 96.25,
             "best_checkpoint": str(out / "train" / "best.safetensors")}
    row = {"artifact": str(out / "artifacts" / "resnet20.onnx"), "backend": "onnxruntime", "precision": "fp32",
           "top1": 96.25, "top5": 99.0, "top1_delta": 0.0, "agreement": 100.0, "max_abs_logit_diff": 1e-6,
           "passed": True, "gate": {"max_top1_drop": 0.1, "min_agreement": 99.9, "basis": "fp32 default"}}
    result.steps += [StepResult("train", "Train", ["train"], 0, 1.0, train),
                     StepResult("validate", "Validate", ["validate"], 0, 1.0,
                                {"passed": True, "dataset": {"images": 240}, "results": [row]})]
    return result, out


def test_demo_report_lists_the_card_it_validates_and_writes_the_gate_as_validate_does(tmp_path: Path) -> None:
    from resnet_deploy.demo.report import write_report
    from resnet_deploy.gates import Gate

    result, out = _demo_result(tmp_path)
    text = write_report(result, out / "report.md").read_text()
    assert "| Train | `train/best.safetensors` |" in text and "last.safetensors" not in text
    assert "start from `train/best.safetensors`" in text
    short = Gate(0.1, 99.9, "").describe()  # the form of validate.md's gate column
    assert f"PASS ({short})" in text and "Δ ≥ −" not in text


def test_demo_curves_title_names_the_data_set_not_its_folder(tmp_path: Path) -> None:
    from resnet_deploy.demo.run import DemoOptions, curves_title

    title = curves_title(DemoOptions(out=tmp_path), {"name": "scikit-learn digits", "train_images": 1557})
    assert title == "resnet20 on scikit-learn digits (1557 training images)"


def test_validate_md_environment_is_read_when_validate_runs(tmp_path: Path) -> None:
    from resnet_deploy.demo.run import environment_now

    start = {"date": "2020-01-01T00:00:00+00:00", "cpu": {"model": "x", "load_average": [99.0, 99.0, 99.0]},
             "gpu": {"name": "kept"}, "versions": {"torch": "kept"}}
    now = environment_now(start)
    assert now["date"] > "2026" and now["cpu"]["load_average"] != [99.0, 99.0, 99.0]
    assert now["gpu"] == {"name": "kept"} and now["versions"] == {"torch": "kept"}


def test_the_readme_excerpt_has_the_columns_the_demo_writes(tmp_path: Path) -> None:
    from resnet_deploy.demo.report import write_report

    result, out = _demo_result(tmp_path)
    written = write_report(result, out / "report.md").read_text().splitlines()
    header = next(line for line in written if line.startswith("| artifact |"))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    excerpt = [line.removeprefix("> ") for line in readme if line.startswith("> | ")]
    assert excerpt and excerpt[0] == header
    assert len(excerpt[2].split(" | ")) == len(header.split(" | "))  # a row has every column


def test_negative_qat_iters_is_one_error_line(tmp_path: Path, cli) -> None:
    result = cli("demo", "--output", str(tmp_path / "demo"), "--qat-iters", "-1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --qat-iters must be 0 (no fine-tuning) or more, got -1"]
    assert not (tmp_path / "demo").exists()
