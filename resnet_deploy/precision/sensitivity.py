"""Per-layer INT8 sensitivity: what putting one layer alone back into higher precision buys.

Calibrate once (the ranges and their cache are `calibration.py`'s, shared with `build-engine`),
quantize the whole model, then for every quantized compute node (Conv, Gemm, MatMul, the residual
Add, pooling) build the same Q/DQ model with only that node excluded (`quantize_static`'s
`nodes_to_exclude`, from the cached ranges: no re-calibration) and measure it against FP32 on
held-out images: top-1 agreement, mean |Δlogit| and the SQNR of the logits. A layer is the more
sensitive the lower the output error becomes without it; ties go to agreement.

Each node is named by the module the export kept: a Conv or Gemm by its weight initializer
(`layer3.4.conv2.weight` → `layer3.4.conv2`; BN is folded into it), other nodes by the exporter's
name scope (`layer3.4` + `add`).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.compare import compare_logits
from resnet_deploy.onnx_check import run_logits

# Nodes whose quantization can cost accuracy; shape ops and monotone ones (Relu, MaxPool) are left out.
CANDIDATE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "AveragePool",
                 "GlobalAveragePool")


@dataclass
class LayerScore:
    node: str  # the ONNX node name
    op_type: str
    block: str  # the module, e.g. layer3.4.conv2
    position: int  # order in the network
    agreement: float  # % top-1 agreement with FP32 when this node alone stays in higher precision
    delta_agreement: float  # points, against full INT8
    mean_abs_logit_diff: float
    sqnr_db: float  # of the logits against FP32

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sqnr_db"] = _json_number(self.sqnr_db)
        return data


@dataclass
class SensitivityResult:
    source: Path
    method: str
    images: int
    data: str  # where the held-out images came from
    full_int8: dict[str, float]  # agreement, mean_abs_logit_diff, sqnr_db of the fully quantized model
    layers: list[LayerScore]  # network order
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def ranked(self) -> list[LayerScore]:
        return rank(self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "method": self.method, "images": self.images, "data": self.data,
                "full_int8": {k: _json_number(v) for k, v in self.full_int8.items()},
                "ranked": [layer.to_dict() for layer in self.ranked()],
                "seconds": round(self.seconds, 3), "notes": self.notes}


def _json_number(value: float) -> float | None:
    """JSON has no infinity: an SQNR of identical logits is null."""
    return value if math.isfinite(value) else None


def rank(layers: list[LayerScore]) -> list[LayerScore]:
    """Most sensitive first: lowest output error without the node, then largest agreement gain."""
    return sorted(layers, key=lambda s: (s.mean_abs_logit_diff, -s.delta_agreement, s.position))


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of the logits, in dB (inf when identical)."""
    noise = float(np.sum((reference.astype(np.float64) - candidate.astype(np.float64)) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def candidate_nodes(quantized: Any) -> list[Any]:
    """The compute nodes of a Q/DQ model that read a dequantized input, in network order."""
    dequantized = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    return [n for n in quantized.graph.node if n.op_type in CANDIDATE_OPS and n.name
            and any(i in dequantized for i in n.input)]


def block_name(node: Any, source_nodes: dict[str, Any]) -> str:
    """The module a node belongs to, from its weight's name or the exporter's name scopes."""
    original = source_nodes.get(node.name, node)  # in the Q/DQ model a weight arrives through a DequantizeLinear
    for name in original.input[1:]:
        if name.endswith(".weight"):
            return name[: -len(".weight")]
    props = {p.key: p.value for p in original.metadata_props}
    try:
        scopes = json.loads(props.get("pkg.torch.onnx.name_scopes", "[]").replace("'", '"'))
    except json.JSONDecodeError:
        scopes = []
    modules = [s for s in scopes[:-1] if s]
    return f"{modules[-1]}.{node.op_type.lower()}" if modules else node.name


def score_layers(
    build: Callable[[list[str]], Path],
    nodes: list[tuple[str, str, str]],
    reference: np.ndarray,
    full: np.ndarray,
    images: np.ndarray,
    *,
    batch: int,
    progress: Callable[[str, int, int], None] | None = None,
    session: Callable[[Path], Any] | None = None,
) -> list[LayerScore]:
    """Score each (node, op_type, block): `build(exclude)` makes the Q/DQ model without those nodes; `session`
    opens a model (default: ONNX Runtime with all optimizations, this machine's kernels)."""
    if session is None:
        from resnet_deploy.onnx_check import session

    full_agreement = compare_logits(reference, full).agreement
    scores = []
    for position, (node, op_type, block) in enumerate(nodes):
        logits = run_logits(session(build([node])), images, batch=batch)
        comparison = compare_logits(reference, logits)
        scores.append(LayerScore(node=node, op_type=op_type, block=block, position=position,
                                 agreement=comparison.agreement,
                                 delta_agreement=comparison.agreement - full_agreement,
                                 mean_abs_logit_diff=comparison.mean_abs_logit_diff,
                                 sqnr_db=sqnr_db(reference, logits)))
        if progress is not None:
            progress("layer sensitivity", position + 1, len(nodes))
    return scores


def analyse(
    source_onnx: str | Path,
    *,
    calib_data: Path,
    data: Path | None = None,
    samples: int = 512,
    images: int = 256,
    method: str = "percentile",
    seed: int = 0,
    cache_base: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    weight_bits: int | None = None,
) -> SensitivityResult:
    """Rank the quantized nodes of `source_onnx` by how much keeping each alone out of INT8 helps.

    Held-out images: `images` from `data` when given, else the calibration folder's held-out slice.
    The ranges come from the calibration cache build-engine uses (the user's cache folder; `cache_base` is unused).
    `weight_bits` None: what `build-engine --int8` takes for this CPU (7 where its integer kernels saturate).
    Every model runs as its Q/DQ arithmetic (optimizations off), as the build's own checks do."""
    import time

    import onnx

    from resnet_deploy.errors import UsageError
    from resnet_deploy.onnx_check import arithmetic_session
    from resnet_deploy.precision.calibration import calibration_batch, load_calibration_images
    from resnet_deploy.precision.common import _session, read_source
    from resnet_deploy.precision.isa import this_cpu, weight_bits_for
    from resnet_deploy.precision.qdq import Quantizer

    started = time.perf_counter()
    if method not in ("entropy", "minmax", "percentile"):
        raise UsageError(f"--calib-method must be entropy, minmax or percentile, got {method!r}")
    src = read_source(source_onnx)
    pre = src.card.preprocessing
    calib = load_calibration_images(calib_data, pre, samples=samples, check_samples=images, seed=seed,
                                    progress=progress)
    held, where = calib.check_images, f"held-out images of {calib.source}"
    if data is not None:
        held = held_out_images(data, pre, images, seed + 1)
        where = f"images of {data}"
    batch, static = calibration_batch(src.input_shape, pre.input_size)
    base = Path(cache_base) if cache_base is not None else src.path.with_name(f"{src.path.stem}.int8.onnx")
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-sensitivity-") as tmp:
        bits = weight_bits if weight_bits is not None else weight_bits_for(this_cpu().cpu_class)
        quantizer = Quantizer.prepare(src, calib, method, Path(tmp), base, batch, static, samples, progress,
                                      weight_bits=bits)
        full_path = quantizer.build([])
        reference = run_logits(_session(src.path), held, batch=batch)
        full = run_logits(arithmetic_session(full_path), held, batch=batch)
        source_nodes = {n.name: n for n in src.model.graph.node}
        nodes = [(n.name, n.op_type, block_name(n, source_nodes))
                 for n in candidate_nodes(onnx.load(str(full_path)))]
        layers = score_layers(quantizer.build, nodes, reference, full, held, batch=batch, progress=progress,
                              session=arithmetic_session)
    comparison = compare_logits(reference, full)
    notes = ["the model card says the weights are random: the ranking is noise"] if src.random_weights else []
    return SensitivityResult(
        source=src.path, method=method, images=len(held), data=where,
        full_int8={"agreement": comparison.agreement, "mean_abs_logit_diff": comparison.mean_abs_logit_diff,
                   "sqnr_db": sqnr_db(reference, full)},
        layers=layers, seconds=time.perf_counter() - started, notes=notes)


def write_plot(result: SensitivityResult, path: str | Path) -> Path:
    """A bar chart, one bar per layer in network order: mean |Δlogit| with that layer alone in higher precision."""
    import io

    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    from resnet_deploy.atomic import write_bytes

    layers = result.layers
    figure = Figure(figsize=(max(6.0, 0.28 * len(layers) + 2), 4.5), layout="constrained")
    axes = figure.add_subplot()
    values = [layer.mean_abs_logit_diff for layer in layers]
    axes.bar(range(len(layers)), values, color="#4c72b0")
    axes.axhline(result.full_int8["mean_abs_logit_diff"], color="#c44e52", linestyle="--", label="full INT8")
    axes.set_xticks(range(len(layers)), [layer.block for layer in layers], rotation=90, fontsize=7)
    axes.set_ylabel("mean |Δlogit| vs FP32")
    axes.set_title(f"INT8 sensitivity of {result.source.name}: one layer kept out of INT8 ({result.images} images)",
                   fontsize=9)
    axes.legend(fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def held_out_images(folder: Path, pre: Any, count: int, seed: int) -> np.ndarray:
    """`count` images of `folder` (evenly across class subfolders) through the card's eval transform."""
    from resnet_deploy.data import open_image_folder_unlabelled, sample_images
    from resnet_deploy.errors import UsageError

    if not Path(folder).is_dir():
        raise UsageError(f"{folder}: no such image folder")
    try:
        dataset = open_image_folder_unlabelled(Path(folder))
    except UsageError as exc:
        raise UsageError(f"--data needs images: {exc}") from None
    return sample_images(dataset, pre, count, seed)


def markdown_report(result: SensitivityResult, plot: Path | None = None) -> str:
    """The ranking as a Markdown report (most sensitive first), with the plot when one was written."""
    full = result.full_int8
    lines = [
        f"# INT8 sensitivity of `{result.source.name}`", "",
        f"Calibration: {result.method}, ranges computed once and reused. Measured on {result.images} {result.data}. "
        f"Full INT8: top-1 agreement with FP32 {full['agreement']:.2f} %, mean |Δlogit| "
        f"{full['mean_abs_logit_diff']:.4g}, SQNR {full['sqnr_db']:.1f} dB. Each row keeps one layer alone out of "
        "INT8; the most sensitive layer lowers the output error the most.", "",
        *[f"> {note}" for note in result.notes],
        "| rank | layer | op | agreement % | Δ agreement | mean abs Δlogit | SQNR dB |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for i, layer in enumerate(result.ranked(), 1):
        lines.append(f"| {i} | `{layer.block}` | {layer.op_type} | {layer.agreement:.2f} | "
                     f"{layer.delta_agreement:+.2f} | {layer.mean_abs_logit_diff:.4g} | {layer.sqnr_db:.1f} |")
    if plot is not None:
        lines += ["", f"![sensitivity by layer, network order]({plot.name})"]
    return "\n".join(lines) + "\n"
