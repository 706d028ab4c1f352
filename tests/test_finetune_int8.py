"""finetune-int8: the fake-quant model, its Q/DQ ONNX, exact resume, and builds that keep the trained scales.

Small real data: the `digits` fixture (a resnet20 trained on 8x8 digits, train/ and test/ PNG folders).
One short fine-tuning (module fixture) feeds the export and build tests. The CIFAR-10 test is `slow`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_deploy.artifacts import PRECISION_KEY, QUANTIZATION_KEY, VERIFICATION_KEY

ITERS = 12


def _props(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _config(digits, output: Path, **overrides):
    from trainer.qat import FinetuneConfig

    options = dict(card=digits.root / "digits.safetensors", data=digits.root, output=output, cpu="portable",
                   iters=ITERS, batch_size=32, calib_samples=128, check_images=200, device="cpu", workers=1)
    options.update(overrides)
    return FinetuneConfig(**options)


@pytest.fixture(scope="module")
def finetuned(digits, tmp_path_factory):
    from trainer.qat import finetune_int8

    torch.set_num_threads(1)
    output = tmp_path_factory.mktemp("qat") / "digits.qat.onnx"
    result = finetune_int8(_config(digits, output))
    return result


def test_fake_quant_model_and_onnx_compute_the_same(digits, tmp_path):
    """Same scales, same rounding: ONNX Runtime (optimizations off) gives the module's logits, for 7 and 8 bits."""
    from resnet_deploy.checkpoints import load_model
    from resnet_deploy.precision.qat import QatResNet, calibrate
    from resnet_deploy.precision.qat_export import check_qdq, export_qdq, module_logits

    loaded = load_model(digits.root / "digits.safetensors")
    calib = torch.from_numpy(digits.images[:128])
    for bits, levels, clipped in ((8, 127, False), (7, 64, False), (7, 64, True)):
        model = QatResNet(loaded.model.eval(), bits)
        if clipped:  # clipped channels: the file must store them clipped (QuantizeLinear saturates at ±127)
            model.fit_weight_clipping()
            assert float(model.stem.clip.min()) < 1.0
        calibrate(model, [calib[:64], calib[64:]])
        path = export_qdq(model, tmp_path / f"m{bits}{clipped}.onnx", card=loaded.card, props={},
                          quantization={"qat": {}, "weight_bits": bits})
        check = check_qdq(path, model, digits.images)
        assert check.passed and check.disagreements == 0 and check.agreement >= 99.5, check
        assert check.max_abs_logit_diff <= 2 * check.logit_step + 1e-6, check
        assert check.exact_fraction > 0.9, check
        # The file holds the module's scales, and its weights quantize to the 7/8-bit range.
        import onnx
        from onnx import numpy_helper

        proto = onnx.load(str(path))
        inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        weight = inits["stem.weight"]
        scale = inits["stem.export_scale"]
        q = np.round(weight / scale.reshape(-1, 1, 1, 1))
        assert np.abs(q).max() == levels
        assert np.allclose(scale, model.stem.weight_scale().numpy(), rtol=1e-6)
        assert float(inits["input_q.export_scale"]) == pytest.approx(float(model.input_q.scale.detach()), rel=1e-7)
        ops = [n.op_type for n in proto.graph.node]
        assert ops.count("Conv") == 19 and ops.count("Gemm") == 1
        # Q/DQ on the input, each Conv's weight and output, each Relu, each Add, the Gemm input and weight, the logits
        assert ops.count("QuantizeLinear") == 1 + 2 * 19 + 19 + 9 + 2 + 1
        assert module_logits(model, digits.images[:4]).shape == (4, 10)


def test_finetune_writes_a_verified_int8_onnx(finetuned, digits):
    assert finetuned.completed and finetuned.output is not None and finetuned.output.is_file()
    assert finetuned.qdq_check["passed"] and finetuned.qdq_check["disagreements"] == 0
    assert finetuned.vs_fp32["agreement"] >= 98.5
    props = _props(finetuned.output)
    assert props[PRECISION_KEY] == "int8"
    record = json.loads(props[QUANTIZATION_KEY])
    assert record["weight_bits"] == 7 and record["cpu_target"] == "portable"
    # The default leaves the logits float: the last node is the Gemm (int8 inputs), no Q/DQ after it.
    assert record["logits"].startswith("float")
    import onnx

    last = onnx.load(str(finetuned.output)).graph.node[-1]
    assert last.op_type == "Gemm" and last.output[0] == "logits"
    qat = record["qat"]
    assert qat["iterations"] == ITERS and qat["seed"] == 0 and qat["data"] == str(digits.root)
    assert qat["temperature"] == 1.0 and qat["ce_weight"] == 0.0 and qat["quantize_logits"] is False
    from resnet_deploy.atomic import sha256_file

    assert qat["teacher_card_sha256"] == sha256_file(digits.root / "digits.safetensors")
    card = json.loads(props["resnet_deploy.card"])
    assert card["lineage"]["int8_finetune"]["teacher_card_sha256"] == qat["teacher_card_sha256"]
    assert json.loads(props[VERIFICATION_KEY])["qdq_vs_module"]["passed"]


@pytest.mark.parametrize("target, suffix", [("onnxruntime", ".cpu.onnx"), ("openvino", ".xml")])
def test_build_engine_takes_the_finetuned_model_without_calibrating(finetuned, digits, tmp_path, cli, target,
                                                                    suffix):
    if target == "openvino":
        pytest.importorskip("openvino")
    output = tmp_path / f"digits.int8{suffix}"
    run = cli("build-engine", "--onnx", str(finetuned.output), "--int8", "--target", target, "-o", str(output),
              "--json")
    assert run.returncode == 0, run.stderr
    assert "nothing is calibrated" in run.stderr
    report = json.loads(run.stdout)
    assert report["precision"] == "int8" and report["precision_check"] is None  # no calibration step ran
    manifest = json.loads(Path(str(output) + ".json").read_text())
    assert manifest["precision"] == "int8"
    assert manifest["precision_check"]["qdq_vs_module"]["passed"]
    assert not list(tmp_path.glob("*.calib-*.json"))  # no calibration cache: nothing was calibrated
    # The artifact computes what the fine-tuned Q/DQ model computes, on real images.
    from resnet_deploy.onnx_check import arithmetic_session, run_logits

    reference = run_logits(arithmetic_session(finetuned.output), digits.images, batch=64)
    if target == "onnxruntime":
        from resnet_deploy.onnx_check import session

        built = run_logits(session(output), digits.images, batch=64)
    else:
        from engines.openvino_engine import OpenVINOEngine

        with OpenVINOEngine(output) as engine:
            built = engine.infer(digits.images)
    assert np.mean(reference.argmax(1) == built.argmax(1)) >= 0.97


def test_resume_is_exact(digits, tmp_path):
    from trainer.qat import finetune_int8

    torch.set_num_threads(1)
    whole = finetune_int8(_config(digits, tmp_path / "a" / "m.onnx", iters=6, max_iters=4, check_images=50))
    assert not whole.completed and whole.output is None
    first = finetune_int8(_config(digits, tmp_path / "b" / "m.onnx", iters=6, max_iters=2, check_images=50))
    assert first.iterations == 2
    resumed = finetune_int8(_config(digits, tmp_path / "b" / "m.onnx", iters=6, max_iters=4, check_images=50,
                                    resume=True))
    assert resumed.iterations == 4
    whole_state = torch.load(tmp_path / "a" / "m.finetune.pt", weights_only=True)
    resumed_state = torch.load(tmp_path / "b" / "m.finetune.pt", weights_only=True)
    for part in ("student", "ema"):  # the weights and their moving average, which is what gets exported
        a, b = whole_state[part], resumed_state[part]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert not torch.equal(whole_state["ema"]["module.stem.weight"], whole_state["student"]["stem.weight"])


def test_weight_clipping_lowers_each_channels_error(digits):
    """fit_weight_clipping: per channel, clipped rounding error never above the max rule's, below it somewhere."""
    from resnet_deploy.checkpoints import load_model
    from resnet_deploy.precision.qat import QatResNet, QConv, QLinear

    model = QatResNet(load_model(digits.root / "digits.safetensors").model.eval(), 7)

    def errors() -> list[torch.Tensor]:
        with torch.no_grad():
            return [((m.quantized_weight("quant") - m.weight) ** 2).reshape(m.weight.shape[0], -1).sum(1)
                    for m in model.modules() if isinstance(m, (QConv, QLinear))]

    before = errors()
    model.fit_weight_clipping()
    after = errors()
    assert all(bool((a <= b + 1e-12).all()) for a, b in zip(after, before, strict=True))
    assert sum(float(b.sum() - a.sum()) for a, b in zip(after, before, strict=True)) > 0


def test_bad_input_is_one_error_line(digits, tmp_path, cli):
    card = str(digits.root / "digits.safetensors")
    for args in (["--data", str(tmp_path / "missing")], ["--data", str(digits.root), "--cpu", "sparc"],
                 ["--data", str(digits.root), "--iters", "0"], ["--data", str(digits.root), "--resume"],
                 ["--data", str(digits.root), "--ema-decay", "1"]):
        run = cli("finetune-int8", card, "-o", str(tmp_path / "m.onnx"), *args)
        assert run.returncode == 2, (args, run.stderr)
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, run.stderr)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="issue 24's 99 % goal is at the edge: the default run (1,000 iterations, "
                   "weight clipping, EMA) gave 99.2 % on 1,000 held-out images but 98.87 % (ONNX Runtime) / 98.99 % "
                   "(OpenVINO) on all 10,000 (AMD EPYC Zen 3); the assertion stays the goal")
def test_cifar10_resnet20_agreement(cifar10_dir, tmp_path):
    """The ResNet-20 card fine-tuned on CIFAR-10 with the defaults: at least 99 % top-1 agreement with FP32 on
    2,000 held-out images (the issue's goal; docs/BENCHMARKS.md has the 10,000-image figures)."""
    from trainer.qat import FinetuneConfig, finetune_int8

    card = Path(__file__).parent / "data" / "resnet20_cifar10.safetensors"
    result = finetune_int8(FinetuneConfig(card=card, data=cifar10_dir, output=tmp_path / "r20.qat.onnx",
                                          cpu="portable", check_images=2000,
                                          min_agreement=0.0, device="cpu"))
    assert result.qdq_check["passed"]
    assert result.vs_fp32["agreement"] >= 99.0, result.vs_fp32
