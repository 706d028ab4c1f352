"""One gate policy: build-engine's check and validate read the same definitions and print them the same way."""

from __future__ import annotations

from pathlib import Path

from resnet_deploy import gates
from resnet_deploy.gates import BUILD_MARGIN, DEFAULT_GATES, build_gate_for, gate_for, judge, render_gate


def test_build_and_validate_gates_come_from_one_place() -> None:
    import resnet_deploy.precision.common as common
    import resnet_deploy.validate.parity as parity
    import resnet_deploy.validate.run as run

    assert parity.gate_for is gates.gate_for and parity.Gate is gates.Gate and run.judge is gates.judge
    for precision, (drop, agreement) in DEFAULT_GATES.items():
        validate_gate = gate_for(precision)
        assert (validate_gate.max_top1_drop, validate_gate.min_agreement) == (drop, agreement)
        build = build_gate_for(precision)
        # The build check aims above validate's gate, by the margin the policy states.
        assert build.min_agreement == agreement + BUILD_MARGIN[precision] > agreement
        assert f"validate's {precision} gate {agreement:g} %" in build.basis
    assert common.INT8_MIN_AGREEMENT == build_gate_for("int8").min_agreement == 95.5
    assert build_gate_for("fp16").min_agreement == common.FP16_MIN_AGREEMENT


def test_build_engine_and_validate_print_the_gate_the_same_way() -> None:
    from resnet_deploy.precision.common import PrecisionResult
    from resnet_deploy.validate.report import gate_lines
    from resnet_deploy.validate.run import ArtifactResult, DatasetSummary, ValidationResult

    built = PrecisionResult(path=Path("m.int8.onnx"), precision="int8", fp16_remainder=False, source=Path("m.onnx"),
                            source_sha256="", sha256="", agreement=99.0, max_abs_logit_diff=0.1,
                            mean_abs_logit_diff=0.01, check_images=256, check_data="held-out images", gate=98.5,
                            random_weights=False)
    assert built.gate_text() == render_gate(build_gate_for("int8"))
    assert built.to_dict()["gate_text"] == built.gate_text()

    def row(reference: bool) -> ArtifactResult:
        return ArtifactResult(
            artifact="m.onnx" if reference else "m.int8.onnx", backend="onnxruntime",
            precision="fp32" if reference else "int8", device="cpu", images=10, top1=90.0, top5=100.0,
            images_per_s=None, is_reference=reference, top1_delta=0.0, top5_delta=0.0, agreement=100.0,
            top5_overlap=100.0, max_abs_logit_diff=0.0, mean_abs_logit_diff=0.0, cosine_similarity=1.0,
            min_cosine_similarity=1.0, nonfinite=0, gate=gate_for("fp32" if reference else "int8"), failures=[],
            transform="")

    summary = DatasetSummary(path="d", kind="folder", split=None, images=10, available=10, limit=None, classes=10,
                             class_names=[str(i) for i in range(10)])
    validated = ValidationResult(summary, [row(True), row(False)], "m.onnx", False, 1.0, 0, 64)
    assert gate_lines(validated) == [f"gate (int8): {render_gate(gate_for('int8'))}"]
    # Same renderer, same words: only the numbers and the basis differ.
    assert render_gate(gate_for("int8")) == "top-1 drop ≤ 1 points and top-1 agreement ≥ 95 % (int8 default)"
    assert render_gate(build_gate_for("int8")) == ("top-1 agreement ≥ 95.5 % (validate's int8 gate 95 % + 0.5 "
                                                   "point build margin)")
    # Check images with labels: the build judges the top-1 drop as validate does.
    assert render_gate(build_gate_for("int8", labelled=True)).startswith("top-1 drop ≤ 1 points and top-1 "
                                                                         "agreement ≥ 95.5 %")


def test_judge() -> None:
    gate = gate_for("int8")
    assert judge(gate, agreement=95.0, top1_delta=-1.0).passed  # both bounds inclusive
    # A low-margin model: top-1 unchanged, agreement 97.9 % (near-ties flip): not a broken quantization.
    assert judge(gate, agreement=97.9, top1_delta=0.1).passed
    # A calibration that loses 1.3 points, and an artifact that saturates (agreement ~90 %), are.
    assert not judge(gate, agreement=97.5, top1_delta=-1.3).passed
    assert not judge(gate, agreement=90.07, top1_delta=-0.59).passed
    failed = judge(gate, agreement=94.9, top1_delta=-1.2)
    assert not failed.passed and len(failed.failures) == 2
    assert "dropped 1.20 points" in failed.failures[0] and "94.90 %" in failed.failures[1]
    noted = judge(gate, agreement=92.19, informational=gates.RANDOM_WEIGHTS_REASON)
    assert noted.passed and noted.failures and "random" in noted.informational
    # The build check has no labels: a drop is never judged there.
    assert judge(build_gate_for("int8"), agreement=95.5, top1_delta=-50.0).passed
    assert build_gate_for("int8", min_agreement=90.0).basis == "--min-agreement"
    assert gate_for("int8", min_agreement=90).basis == "--min-agreement (int8 default otherwise)"
