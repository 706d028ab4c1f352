"""Figures in the style of the paper: error curves (Fig. 6) and layer-response stds (Fig. 7).

`python -m trainer plot RUN [RUN ...] -o fig.png` overlays runs, e.g. plain20/plain56 against
resnet20/resnet56 to show the degradation problem: dashed lines are training error, bold lines test
error, one colour per run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resnet_deploy.atomic import atomic_path
from resnet_deploy.errors import UsageError
from trainer.runlog import read_metrics

RESPONSES_FILE = "responses.json"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(path: Path, records: list[dict[str, Any]]) -> str:
    arch = next((r.get("arch") for r in records if r.get("arch")), None)
    return f"{arch} ({path.name})" if arch and arch != path.name else (arch or path.name)


def _save(fig: Any, output: Path) -> Path:
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return output


def plot_curves(runs: list[Path], output: Path, *, labels: list[str] | None = None, title: str | None = None) -> Path:
    """Training (dashed) and test (bold) top-1 error against iterations, one colour per run (Fig. 6)."""
    if not runs:
        raise UsageError("name at least one run folder to plot")
    if labels is not None and len(labels) != len(runs):
        raise UsageError(f"{len(labels)} labels for {len(runs)} runs")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    top = 0.0
    all_records = []
    for run in runs:
        records = read_metrics(run)
        if not records:
            raise UsageError(f"{run}: metrics.jsonl holds no evaluations yet")
        all_records.append(records)
    longest = max(r["iteration"] for records in all_records for r in records)
    unit = 1e4 if longest >= 20_000 else 1.0  # the paper's axis is in units of 1e4 iterations
    for index, (run, records) in enumerate(zip(runs, all_records, strict=True)):
        label = labels[index] if labels else _label(run, records)
        color = colors[index % len(colors)]
        iters = [r["iteration"] / unit for r in records]
        train = [r["train_error"] for r in records]
        test = [100 - r["test_top1"] for r in records]
        marker = "o" if len(records) == 1 else None  # one evaluation draws no line: show the point
        ax.plot(iters, train, "--", color=color, linewidth=1, marker=marker)
        ax.plot(iters, test, "-", color=color, linewidth=2, label=label, marker=marker)
        top = max(top, *train, *test)
    ax.set_xlabel("iter. (1e4)" if unit != 1 else "iter.")
    ax.set_ylabel("error (%)")
    ax.set_ylim(0, min(100.0, top * 1.05 + 1))
    ax.grid(alpha=0.3)
    ax.legend(title="dashed: training, bold: test", fontsize=8, title_fontsize=8)
    if title:
        ax.set_title(title)
    path = _save(fig, output)
    plt.close(fig)
    return path


def read_responses(run: Path) -> list[dict[str, Any]]:
    file = run / RESPONSES_FILE if run.is_dir() else run
    if not file.is_file():
        raise UsageError(f"{run}: no {RESPONSES_FILE} (train with --analyze-responses)")
    return list(json.loads(file.read_text())["layers"])


def plot_responses(runs: list[Path], output: Path, *, labels: list[str] | None = None) -> Path:
    """Std of each 3x3 layer's response (after BN, before ReLU/addition): layer order and sorted (Fig. 7)."""
    if not runs:
        raise UsageError("name at least one run folder to plot")
    if labels is not None and len(labels) != len(runs):
        raise UsageError(f"{len(labels)} labels for {len(runs)} runs")
    plt = _pyplot()
    fig, (ax_order, ax_sorted) = plt.subplots(2, 1, figsize=(6.4, 6.0))
    for index, run in enumerate(runs):
        layers = [layer for layer in read_responses(run) if layer["role"] != "residual"]
        label = labels[index] if labels else run.name
        stds = [layer["std"] for layer in layers]
        positions = range(1, len(stds) + 1)
        ax_order.plot(positions, stds, label=label, linewidth=1)
        ax_sorted.plot(positions, sorted(stds, reverse=True), label=label, linewidth=1)
    ax_order.set_xlabel("layer index (original)")
    ax_sorted.set_xlabel("layer index (sorted by magnitude)")
    for ax in (ax_order, ax_sorted):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = _save(fig, output)
    plt.close(fig)
    return path
