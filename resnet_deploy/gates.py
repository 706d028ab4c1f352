"""The accuracy gates, one definition per precision, used by `build-engine` and by `validate`.

A gate bounds two numbers of an artifact against its reference on the same images: the top-1 drop
(points; `validate` only, it needs labels) and the top-1 agreement (%). `validate` judges the point
estimates on the whole evaluation set; its table also shows the 95 % intervals (`confidence.py`).

The build-time check (`build-engine --fp16/--int8`) runs on images the calibration did not use and
has no labels, so it judges agreement only, and it aims above validate's gate by a fixed margin
(`BUILD_MARGIN`, in points): a model the build accepts should not then fail `validate` on the
same distribution. A margin rather than a lower confidence bound because the check sets are small
(128–256 images): a 95 % Wilson lower bound of 98 % needs 256 agreeing images out of 256, which
would turn every ordinary quantization error into a failure. The margin is printed with the gate.

INT8 judges accuracy, as the field does (MLPerf: 99 % of the FP32 top-1; Intel Neural Compressor: 1 %
relative loss): the top-1 drop is the gate, and agreement is a floor that only a model computing
something else falls under. A low-margin model (many near-ties) loses a few points of agreement to
any quantization and keeps its top-1; a saturating CPU kernel drops agreement to ~90 % (measured on
an AVX2 CPU with 8-bit weights). A CPU INT8 artifact is also held against the Q/DQ arithmetic of its
own model (`SATURATION_GAP`): integer kernels that agree with FP32 markedly less often than the
arithmetic they implement are saturating, whatever the calibration.

When the weights are random (the model card says so) or the check images are random, agreement is
noise: every check is then informational, it is reported with the reason and never fails a build.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from resnet_deploy import registry

# (largest allowed top-1 drop in points, smallest top-1 agreement in %), per precision: each `Precision`
# declaration carries its own (registry/precisions.py, which says why bf16 shares fp16's).
DEFAULT_GATES: dict[str, tuple[float, float]] = {p.name: p.gate for p in registry.precisions()}
# INT8 on a CPU: points of top-1 agreement with FP32 by which this machine's integer kernels may trail the Q/DQ
# arithmetic of the same model (ONNX Runtime with graph optimizations off) before the gap counts as saturation.
SATURATION_GAP = 0.5
# Saturation is claimed only on strong evidence: real saturation flips hundreds of images one way (p ~ 1e-50 on
# 1,000 images); fused kernels that requantize differently flip a few near-ties of a low-margin model either way.
SATURATION_P = 0.001


def saturating(only_arithmetic: int, only_kernels: int, images: int) -> tuple[bool, float, float]:
    """Whether integer kernels trail their own Q/DQ arithmetic: (verdict, gap in points, McNemar's exact p).

    `only_arithmetic`: images where the arithmetic agrees with the reference and the kernels do not;
    `only_kernels` the other way round. The gap must exceed `SATURATION_GAP` and be significant (p <
    `SATURATION_P`): on 100 images one flip is a point, and kernels that round differently flip a few near-ties
    either way."""
    from resnet_deploy.confidence import mcnemar_exact_p

    gap = 100.0 * (only_arithmetic - only_kernels) / images if images else 0.0
    p = mcnemar_exact_p(only_kernels, only_arithmetic)
    return gap > SATURATION_GAP and p < SATURATION_P, gap, p
# Points the build-time agreement check adds to validate's agreement gate (see the module docstring).
BUILD_MARGIN: dict[str, float] = {p.name: p.build_margin for p in registry.precisions()}
RANDOM_WEIGHTS_REASON = ("the model card says the weights are random: agreement between two precisions of random "
                         "weights is noise, so this check is informational")
RANDOM_INPUTS_REASON = "checked on random inputs, not images: agreement there is noise, so this check is informational"
_EPS = 1e-9  # counts become percentages through division; compare with a hair of slack


@dataclass(frozen=True)
class Gate:
    """Pass if top-1 drops at most `max_top1_drop` points and agreement is at least `min_agreement` %.

    `max_top1_drop` is None for the build-time check (no labels there)."""

    max_top1_drop: float | None
    min_agreement: float
    basis: str  # where the numbers came from, e.g. "int8 default" or "--max-top1-drop/--min-agreement"

    def to_dict(self) -> dict[str, object]:
        return {"max_top1_drop": self.max_top1_drop, "min_agreement": self.min_agreement, "basis": self.basis}

    def describe(self) -> str:
        """The short form for a table cell."""
        drop = f"Δ≤{self.max_top1_drop:g} " if self.max_top1_drop is not None else ""
        return f"{drop}agr≥{self.min_agreement:g}"


@dataclass
class Judgement:
    passed: bool
    failures: list[str] = field(default_factory=list)  # also kept (as notes) when informational
    informational: str | None = None  # why the check does not count, when it does not

    def to_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "failures": self.failures, "informational": self.informational}


def gate_for(precision: str, *, max_top1_drop: float | None = None, min_agreement: float | None = None) -> Gate:
    """`validate`'s gate for `precision`, with either bound overridden by the user's flags."""
    known = precision in DEFAULT_GATES
    drop, agreement = DEFAULT_GATES.get(precision, DEFAULT_GATES["fp32"])
    overridden = [flag for flag, value in (("--max-top1-drop", max_top1_drop), ("--min-agreement", min_agreement))
                  if value is not None]
    basis = f"{precision if known else 'fp32 (unknown precision ' + precision + ')'} default"
    if overridden:
        basis = f"{'/'.join(overridden)} ({basis} otherwise)" if len(overridden) == 1 else "/".join(overridden)
    return Gate(
        max_top1_drop=drop if max_top1_drop is None else max_top1_drop,
        min_agreement=agreement if min_agreement is None else min_agreement,
        basis=basis,
    )


def build_gate_for(precision: str, *, min_agreement: float | None = None, labelled: bool = False,
                   max_top1_drop: float | None = None) -> Gate:
    """The build-time check: validate's agreement gate plus `BUILD_MARGIN` (or the user's --min-agreement as is),
    and, when the check images have labels (`labelled`), validate's top-1 drop bound (or --max-top1-drop)."""
    validate_gate = gate_for(precision)
    drop = (validate_gate.max_top1_drop if max_top1_drop is None else max_top1_drop) if labelled else None
    if min_agreement is not None:
        return Gate(drop, min_agreement, "--min-agreement")
    margin = BUILD_MARGIN.get(precision, BUILD_MARGIN["fp32"])
    return Gate(drop, min(100.0, validate_gate.min_agreement + margin),
                f"validate's {precision} gate "
                f"{validate_gate.min_agreement:g} % + {margin:g} point build margin")


def render_gate(gate: Gate) -> str:
    """The gate in words, printed the same way by build-engine and validate."""
    parts = []
    if gate.max_top1_drop is not None:
        parts.append(f"top-1 drop ≤ {gate.max_top1_drop:g} points")
    parts.append(f"top-1 agreement ≥ {gate.min_agreement:g} %")
    return f"{' and '.join(parts)} ({gate.basis})"


def judge(gate: Gate, *, agreement: float, top1_delta: float | None = None, finite: bool = True,
          informational: str | None = None) -> Judgement:
    """Judge one comparison against `gate`. `top1_delta` is signed (artifact minus reference: negative is a
    drop), `agreement` in %. With `informational` (a reason) the failures are reported but do not count."""
    failures = []
    if not finite:
        failures.append("the model produces inf/NaN outputs")
    if gate.max_top1_drop is not None and top1_delta is not None:
        drop = -top1_delta
        if not drop <= gate.max_top1_drop + _EPS:
            failures.append(f"top-1 dropped {drop:.2f} points vs the reference (gate: at most "
                            f"{gate.max_top1_drop:g}, {gate.basis})")
    if not agreement >= gate.min_agreement - _EPS:
        failures.append(f"top-1 agreement with the reference is {agreement:.2f} % (gate: at least "
                        f"{gate.min_agreement:g} %, {gate.basis})")
    if informational is not None:
        return Judgement(True, failures, informational)
    return Judgement(not failures, failures)


def gate_failures(gate: Gate, top1_delta: float, agreement: float) -> list[str]:
    """Messages for each bound the artifact misses; empty when it passes."""
    return judge(gate, agreement=agreement, top1_delta=top1_delta).failures
