"""The shared command-line options (the `hf` CLI's pattern: `Annotated` aliases defined once).

One `--device` grammar for every command: `auto`, `cpu`, `cuda` or `cuda:N`, parsed by `parse_device`.
One default rule: `auto` means CUDA when PyTorch sees a GPU, else the CPU; it is resolved while the
options are parsed, so command bodies only ever see `cpu`, `cuda` or `cuda:N`.
`--output/-o` names what a command writes (train and demo also take their old `--out`, as a hidden
alias rewritten in `runner.run_command`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from resnet_deploy.errors import UsageError

DEVICE_GRAMMAR = "auto, cpu, cuda or cuda:N"
DEVICE_HELP = f"{DEVICE_GRAMMAR} (auto: cuda when PyTorch sees a GPU, else cpu)."


def parse_device(value: str | None) -> str:
    """`auto|cpu|cuda|cuda:N` (any case) → `cpu`, `cuda` or `cuda:N`; `auto` (or None) by the one default rule."""
    name = "auto" if value is None else value.strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise UsageError(f"--device must be {DEVICE_GRAMMAR}, got {value!r}")
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_callback(value: str | None) -> str:
    return parse_device(value)


DepthOption = Annotated[
    int | None,
    typer.Option("--depth", help="ResNet depth: 18/34/50/101/152 (ImageNet family) or 20/32/44/56/110/1202 (CIFAR)."),
]
ArchOption = Annotated[
    str | None, typer.Option("--arch", help="Exact architecture name, e.g. resnet50, resnet20, plain20.")
]
CheckpointOption = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="Model card (.safetensors), trainer checkpoint or foreign .pth/.pt weights."),
]
NumClassesOption = Annotated[int | None, typer.Option("--num-classes", help="Classifier size (default: the family's).")]
RenameOption = Annotated[
    list[str] | None, typer.Option("--rename", help="OLD=NEW key-prefix rename for foreign weights (repeatable).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else there.")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the result.")]
DeviceOption = Annotated[str, typer.Option("--device", help=DEVICE_HELP, callback=_device_callback)]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr; warnings and errors stay.")
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr.")]


def resolve_arch(depth: int | None, arch: str | None, *, required: bool = True) -> str | None:
    """`--depth N` or `--arch NAME` (not both) → a registered architecture name."""
    from resnet_deploy.models import arch_from_depth, get_entry

    if depth is not None and arch is not None:
        raise UsageError("give --depth or --arch, not both")
    try:
        if depth is not None:
            return arch_from_depth(depth)
        if arch is not None:
            return get_entry(arch).name
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    if required:
        raise UsageError("name a model: --depth N or --arch NAME")
    return None


# --- values of the preprocessing and class flags (import-weights, import-onnx) ------------------------------


def parse_floats3(text: str | None, flag: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} expects three comma-separated numbers, got {text!r}") from None
    if len(values) != 3:
        raise UsageError(f"{flag} expects three comma-separated numbers (r,g,b), got {text!r}")
    return values  # type: ignore[return-value]


def class_names_from_folder(folder: Path) -> list[str]:
    """ImageFolder order: the sorted names of the class subfolders (a split folder is looked into)."""
    if not folder.is_dir():
        raise UsageError(f"--classes-from {folder}: not a folder")
    for split in ("train", "val", "test"):
        if (folder / split).is_dir():
            folder = folder / split
            break
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise UsageError(f"--classes-from {folder}: no class subfolders")
    return names


def parse_class_names(classes: str | None, classes_from: Path | None) -> list[str] | None:
    """`--classes a,b,c` or `--classes-from DIR` (not both) → class names, or None when neither is given."""
    if classes and classes_from:
        raise UsageError("give --classes or --classes-from, not both")
    if classes_from:
        return class_names_from_folder(classes_from)
    return [c.strip() for c in classes.split(",")] if classes else None


# --- MLPerf LoadGen scenarios (bench, on artifacts and on served models) --------------------------------------

ScenarioOption = Annotated[str | None, typer.Option(
    "--scenario", help="Also run MLPerf LoadGen scenarios, comma-separated: single-stream, offline, server "
                       "(extra: resnet-deploy[loadgen]).", show_default=False)]
TargetQpsOption = Annotated[float | None, typer.Option(
    "--target-qps", help="Server scenario: target queries/s [default: half of what one stream sustains].",
    show_default=False)]
TargetLatencyOption = Annotated[float, typer.Option(
    "--target-latency-ms", help="Server scenario: the p99 latency bound (MLPerf ResNet-50: 15 ms).")]
PeakQpsOption = Annotated[bool, typer.Option(
    "--peak-qps", help="Server scenario: search the highest target QPS LoadGen judges VALID.")]
