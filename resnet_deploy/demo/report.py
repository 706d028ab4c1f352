"""The demo's one report: `DIR/report.md`, with the PNGs of training and bench beside it.

Written for someone who has never used the tool: what ran, whether each artifact kept its
accuracy, how fast each one is, on which machine, and how to run every step by hand.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from resnet_deploy.atomic import write_text
from resnet_deploy.bench.report import environment_lines
from resnet_deploy.demo.run import DemoResult
from resnet_deploy.gates import Gate


def _pct(value: Any) -> str:
    return "—" if value is None else f"{float(value):.2f}"


def _delta(value: Any) -> str:
    return "—" if value is None else f"{float(value):+.2f}"


def _rel(path: Path | str, base: Path) -> str:
    return os.path.relpath(Path(path), base)


def _written_file(output: dict[str, Any]) -> Path | None:
    """The file a step's JSON says it wrote (train: its model card; the others: their artifact)."""
    for key in ("output", "path", "best_checkpoint", "checkpoint"):  # train: the best card, what is validated
        value = output.get(key)
        if isinstance(value, str):
            return Path(value)
    return None


def _training_section(result: DemoResult, base: Path) -> list[str]:
    step = result.step("train")
    out = (step.output or {}) if step else {}
    lines = ["## 2. Training", ""]
    top1 = out.get("test_top1")
    lines.append(
        f"{result.options.arch} trained for {out.get('iters', '?')} iterations "
        f"(batch {result.options.batch_size}, the paper's CIFAR recipe with its schedule shortened "
        f"proportionally) in {step.seconds:.0f} s at {out.get('images_per_s', 0):.0f} images/s: "
        f"final test top-1 **{_pct(top1)} %**, top-5 {_pct(out.get('test_top5'))} %, "
        f"last training loss {out.get('train_loss', float('nan')):.3f}."
    )
    best = out.get("best_checkpoint")
    if best:
        lines.append(f"The steps below start from `{_rel(best, base)}`, the card of the best test top-1 "
                     f"({_pct(out.get('best_top1'))} %).")
    plot = base / "train" / "curves.png"
    if plot.is_file():
        lines += ["", f"![Training and test error against iterations]({_rel(plot, base)})",
                  "", "Training error (dashed) and test error (bold) against iterations, as in the paper's Fig. 6."]
    return [*lines, ""]


def _accuracy_section(result: DemoResult, base: Path) -> list[str]:
    step = result.step("validate")
    data = (step.output or {}) if step else {}
    dataset = data.get("dataset") or {}
    lines = ["## 3. Accuracy and parity (validate)", ""]
    passed = data.get("passed")
    verdict = "**every artifact passed its gate**" if passed else "**at least one artifact FAILED its gate**"
    lines.append(f"{dataset.get('images', '?')} test images through every artifact, the same decoded batches for "
                 f"each; deltas are against the PyTorch model card. Verdict: {verdict}.")
    lines += ["", "| artifact | backend | precision | top-1 % | top-5 % | Δtop-1 | agreement % | max abs Δlogit "
              "| gate |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in data.get("results", []):
        gate = row.get("gate") or {}
        gate_text = "PASS" if row.get("passed") else "FAIL" if row.get("passed") is False else "—"
        if gate.get("max_top1_drop") is not None:  # validate.md's own short form of the gate
            gate_text += f" ({Gate(gate['max_top1_drop'], gate.get('min_agreement', 0.0), '').describe()})"
        diff = row.get("max_abs_logit_diff")
        lines.append(
            f"| `{Path(str(row.get('artifact'))).name}` | {row.get('backend')} | {row.get('precision')} | "
            f"{_pct(row.get('top1'))} | {_pct(row.get('top5'))} | {_delta(row.get('top1_delta'))} | "
            f"{_pct(row.get('agreement'))} | {'—' if diff is None else f'{diff:.2e}'} | {gate_text} |"
        )
    lines += _int8_side_by_side(result, data.get("results", []))
    for row in data.get("results", []):
        for failure in row.get("failures") or []:
            lines.append(f"\n- `{Path(str(row.get('artifact'))).name}`: {failure}")
    lines += ["", f"Full report: [{_rel(base / 'validate.md', base)}]({_rel(base / 'validate.md', base)})", ""]
    return lines


def _int8_side_by_side(result: DemoResult, rows: list[dict[str, Any]]) -> list[str]:
    """Post-training (calibrated) and fine-tuned INT8 of each target, one sentence: their agreement and top-1."""
    by_path = {str(row.get("artifact")): row for row in rows}
    finetune = result.step("finetune-int8")
    pairs = []
    for step in result.steps:
        if not step.name.startswith("qat-") or step.output is None:
            continue
        target = step.name.removeprefix("qat-")
        calibrated = result.step("int8" if target == "onnxruntime" else f"{target}-int8")
        tuned_row = by_path.get(str(_written_file(step.output)))
        calibrated_row = by_path.get(str(_written_file(calibrated.output or {}))) if calibrated else None
        if tuned_row and calibrated_row:
            pairs.append(f"{target}: calibrated {_pct(calibrated_row.get('agreement'))} % agreement (top-1 "
                         f"{_delta(calibrated_row.get('top1_delta'))}), fine-tuned {_pct(tuned_row.get('agreement'))} "
                         f"% (top-1 {_delta(tuned_row.get('top1_delta'))})")
    if not pairs or finetune is None:
        return []
    iters = (finetune.output or {}).get("iterations", "?")
    return ["", f"INT8 two ways, side by side: post-training calibration, and quantization-aware fine-tuning "
                f"({iters} iterations with the card as teacher, {finetune.seconds:.0f} s): " + "; ".join(pairs) + "."]


def _bench_section(result: DemoResult, base: Path) -> list[str]:
    step = result.step("bench")
    data = (step.output or {}) if step else {}
    lines = ["## 4. Latency and throughput (bench)", ""]
    timing = data.get("timing") or {}
    lines.append("Per-call latency after warm-up, every call synchronized; speed-up against PyTorch FP32 at the "
                 f"same batch size. Timing: {timing.get('method', 'see bench.md')}.")
    lines += ["", "| backend | precision | batch | p50 ms | p99 ms | mean ms | images/s | speed-up |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += bench_rows(data.get("results", []))
    skipped = data.get("skipped") or []
    if skipped:
        lines += ["", "Not measured here:"]
        lines += [f"- {s.get('backend')} {s.get('precision')}: {s.get('reason')}" for s in skipped]
    if (base / "bench.png").is_file():
        lines += ["", "![Latency against batch size and throughput per backend and precision](bench.png)"]
    lines += ["", "Full report: [bench.md](bench.md)", ""]
    return lines


def bench_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The bench table's rows (from bench's JSON), then why whole batch sizes have no speed-up, if they have none."""
    # Batch sizes whose PyTorch FP32 row is flagged: no row there has a speed-up, and the report says why.
    no_base = sorted({row.get("batch_size") for row in rows if row.get("backend") == "torch"
                      and row.get("precision") == "fp32" and row.get("flags")})
    lines = []
    for row in rows:
        latency = row.get("latency_ms") or {}
        speedup = row.get("speedup")
        if speedup is None and not row.get("flags") and row.get("batch_size") in no_base:
            speedup = "— (the PyTorch FP32 baseline is flagged)"
        lines.append(
            f"| {row.get('backend')} | {row.get('precision')} | {row.get('batch_size')} | "
            f"{latency.get('p50', 0):.3f} | {latency.get('p99', 0):.3f} | {latency.get('mean', 0):.3f} | "
            f"{row.get('throughput_ips', 0):.0f} | {_speedup_cell(row.get('flags'), speedup)} |"
        )
    if no_base:
        lines += ["", f"No speed-up at batch {', '.join(map(str, no_base))}: every speed-up is divided by the PyTorch "
                  "FP32 row of its batch size, and that row is flagged (a busy machine disturbed it)."]
    return lines


def _speedup_cell(flags: list[str] | None, speedup: float | str | None) -> str:
    """A flagged row (a busy machine disturbed it) shows why instead of a speed-up; a text is why there is none."""
    if flags:
        return "flagged: " + "; ".join(flags).replace("|", "/")
    if isinstance(speedup, str):
        return speedup
    return "—" if speedup is None else f"{speedup:.2f}×"


def _size_bytes(target: Path) -> int:
    """An OpenVINO IR is its .xml and the .bin of weights beside it."""
    weights = target.with_suffix(".bin")
    extra = weights.stat().st_size if target.suffix == ".xml" and weights.is_file() else 0
    return target.stat().st_size + extra


def write_report(result: DemoResult, path: Path) -> Path:
    base = path.parent
    data = result.data_description
    lines = ["# resnet-deploy demo report", ""]
    status = "passed" if result.passed else "did not pass"
    lines.append(
        f"One command took a {result.options.arch} (He et al. 2016) from images to deployable artifacts in "
        f"{result.seconds:.0f} s and checked each one: the pipeline **{status}**. Each section below is one step; "
        "section 6 lists the commands to run them yourself."
    )
    lines += ["", "## 1. Data", "",
              f"- Source: {data['source']}",
              f"- {data['classes']} classes: {', '.join(data['class_names'][:12])}",
              f"- {data['train_images']} training images, {data['test_images']} test images "
              f"(`{data['test_split']}/`), ImageFolder layout under `{_rel(result.options.out / 'data', base)}`"
              if data.get("embedded") else f"- {data['train_images']} training images, {data['test_images']} test "
              f"images (`{data['test_split']}/`)", ""]
    lines += _training_section(result, base)
    lines += _accuracy_section(result, base)
    lines += _bench_section(result, base)

    lines += ["## 5. Artifacts and environment", "", "| step | file | size | seconds |", "| --- | --- | ---: | ---: |"]
    for step in result.steps:
        if step.skipped_reason:
            lines.append(f"| {step.title} | skipped: {step.skipped_reason} | — | — |")
            continue
        target = _written_file(step.output or {})
        size = f"{_size_bytes(target) / 1e6:.2f} MB" if target and target.is_file() else "—"
        lines.append(f"| {step.title} | {f'`{_rel(target, base)}`' if target else '—'} | {size} | "
                     f"{step.seconds:.1f} |")
    env = ((result.step("bench") or result.steps[-1]).output or {}).get("environment")
    if env:
        lines += ["", *environment_lines(env)]
    lines += ["", "## 6. Reproduce by hand", "",
              "Each step above, as the command that does it by hand (each also accepts `--json`):", "", "```sh"]
    lines += [step.command for step in result.steps if not step.skipped_reason]
    lines += ["```", ""]
    write_text(path, "\n".join(lines))
    return path
