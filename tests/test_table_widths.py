"""The default tables of `validate` and `bench` fit ordinary terminals: at 80, 100 and 120 columns no
number is split across lines, and from 100 columns on nothing is cut short with "…". `--wide` shows
every column."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text

from resnet_deploy.bench.report import _table_cells, results_tables
from resnet_deploy.bench.timing import BenchReport, BenchResult, LatencyStats, Skipped, TimingConfig
from resnet_deploy.validate.parity import gate_for
from resnet_deploy.validate.report import COLUMNS, results_table, row_cells
from resnet_deploy.validate.run import ArtifactResult, DatasetSummary, ValidationResult

WIDTHS = (80, 100, 120)
NUMBER = re.compile(r"^[+-]?\d[\d.e+-]*[%×]?$")


def render(tables: list, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, highlight=False)
    for table in tables:
        console.print(table)
    return console.file.getvalue()


def assert_numbers_whole(text: str, numbers: set[str], width: int) -> None:
    lines = text.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    for number in numbers:
        assert any(number in line for line in lines), f"{number!r} is split or cut at {width} columns:\n{text}"
    if width >= 100:
        assert "…" not in text, f"a cell was cut short at {width} columns:\n{text}"


def _artifact(name: str, backend: str, precision: str, *, reference: bool = False, ensemble: bool = False,
              failures: tuple[str, ...] = ()) -> ArtifactResult:
    parity = None if ensemble else 1
    return ArtifactResult(
        artifact=name if ensemble else f"/home/someone/runs/2026-11-29/exports/{name}", backend=backend,
        precision=precision, device="cpu", images=10000, top1=100.0 if reference else 91.37, top5=99.98,
        images_per_s=123456.7, is_reference=reference, top1_delta=-12.34, top5_delta=0.05, agreement=87.65,
        top5_overlap=99.87, max_abs_logit_diff=None if parity is None else 12.3456,
        mean_abs_logit_diff=None if parity is None else 3.89e-1, cosine_similarity=None if parity is None else 0.999876,
        min_cosine_similarity=None, nonfinite=0, gate=None if ensemble else gate_for(precision),
        failures=list(failures), transform="resize 36, centre crop 32")


@pytest.fixture(scope="module")
def validation() -> ValidationResult:
    dataset = DatasetSummary(path="/work/shared/datasets/cifar10/test", kind="imagefolder", split="test",
                             images=10000, available=10000, limit=None, classes=10, class_names=[])
    rows = [_artifact("resnet110.safetensors", "torch", "fp32", reference=True),
            _artifact("resnet110.int8.onnx", "onnxruntime", "int8", failures=("top-1 dropped",)),
            _artifact("resnet110.openvino.bf16.xml", "openvino", "bf16"),
            _artifact("ensemble of 3", "ensemble", "fp32+int8+bf16", ensemble=True)]
    return ValidationResult(dataset=dataset, results=rows, reference=rows[0].artifact, ten_crop=False, seconds=9.0,
                            workers=1, batch_size=64)


def _numbers(cells: list[str]) -> set[str]:
    return {cell for cell in cells if NUMBER.match(cell)}


@pytest.mark.parametrize("width", WIDTHS)
def test_validate_table_fits(validation, width):
    table = results_table(validation)
    shown = {str(column.header).replace("\n", " ") for column in table.columns}
    numbers = set()
    for r in validation.results:
        cells = dict(zip(COLUMNS, row_cells(r), strict=True))
        numbers |= _numbers([cells[c] for c in COLUMNS if c in shown])
    assert {"-12.34", "91.37", "1.23e+01", "123457", "100.00"} <= numbers  # the widest values are checked
    assert_numbers_whole(render([table], width), numbers, width)


def test_validate_wide_shows_every_column(validation):
    compact, wide = results_table(validation), results_table(validation, wide=True)
    assert len(compact.columns) < len(wide.columns) == len(COLUMNS)
    text = render([wide], 200)
    assert "cosine" in text and "0.999876" in text and "Δ≤1 agr≥95" in text and "…" not in text


def _bench_row(backend: str, precision: str, batch: int, ms: float, speedup: float | None) -> BenchResult:
    stats = LatencyStats(mean=ms, std=ms * 0.31, p50=ms * 0.98, p90=ms * 1.2, p95=ms * 1.3, p99=ms * 1.61,
                         min=ms * 0.9, max=ms * 2.5)
    return BenchResult(model="resnet152", backend=backend, precision=precision, batch_size=batch, device="cpu",
                       latency_ms=stats, throughput_ips=batch * 1000 / ms, iterations=10, warmup=2,
                       copies="none (cpu)", timer="host", speedup=speedup)


@pytest.fixture(scope="module")
def bench_report() -> BenchReport:
    rows = [_bench_row("torch", "fp32", 1, 604.9, 1.0), _bench_row("onnxruntime", "int8", 1, 0.7287, 830.12),
            _bench_row("openvino", "bf16", 32, 3796.123, 0.16), _bench_row("onnxruntime", "fp16", 256, 0.05, 12.3)]
    skipped = [Skipped("resnet152", "tensorrt", "fp16", "TensorRT is not installed (pip install "
                       "'resnet-deploy[tensorrt]') and no NVIDIA GPU is visible to PyTorch here")]
    return BenchReport(environment={"cpu": {"model": "Intel(R) Xeon(R) Processor"}}, results=rows, skipped=skipped,
                       timing=TimingConfig(warmup=2, iterations=10, duration_s=None))


@pytest.mark.parametrize("width", WIDTHS)
def test_bench_table_fits(bench_report, width):
    tables = results_tables(bench_report)
    shown = {str(column.header) for column in tables[0].columns}
    numbers = set()
    for r in bench_report.results:
        cells = _table_cells(r, {})
        numbers |= _numbers([Text.from_markup(cells[name]).plain.removesuffix(" ⚠") for name in shown])
    assert {"3796.12", "6111.76", "830×", "5120000", "31.0%"} <= numbers  # the widest values are checked
    assert_numbers_whole(render(tables, width), numbers, width)


def test_bench_wide_shows_every_latency_column(bench_report):
    compact, wide = results_tables(bench_report)[0], results_tables(bench_report, wide=True)[0]
    headers = [str(column.header) for column in wide.columns]
    assert len(compact.columns) < len(headers)
    assert {"mean", "std", "p50", "p90", "p95", "p99", "min", "max"} <= set(headers)
    text = render([wide], 160)
    assert "9490.31" in text and "…" not in text  # max of the 3796 ms row


# --- every table at COLUMNS=80 and 100: numbers whole, names whole (folded, never cut), nothing past the edge ----

TERMINALS = (80, 100)


def column_text(text: str, header: str, next_header: str) -> str:
    """The body of one left-aligned column, its folded lines joined: a name cut short or shared shows here."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip().startswith("─"))
    head = lines[rule - 1]
    start = head.index(header)
    end = head.index(next_header, start + len(header))
    return "".join(line[start:end].strip() for line in lines[rule + 1:])


def assert_fits(text: str, width: int, numbers: set[str]) -> None:
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width, text
    assert "…" not in text, f"something was cut short at {width} columns:\n{text}"
    lines = text.splitlines()
    for number in numbers:
        assert any(number in line for line in lines), f"{number!r} is split or cut at {width} columns:\n{text}"


@pytest.mark.parametrize("width", TERMINALS)
def test_validate_with_a_long_card_name_fits_with_the_names_whole(width):
    dataset = DatasetSummary(path="/tmp/digits/test", kind="imagefolder", split="test", images=50, available=50,
                             limit=None, classes=10, class_names=[])
    rows = [_artifact("resnet20_cifar10.safetensors", "torch", "fp32", reference=True),
            _artifact("resnet20_cifar10.int8.onnx", "onnxruntime", "int8"),
            _artifact("resnet20_cifar10.bf16.xml", "openvino", "bf16")]
    result = ValidationResult(dataset=dataset, results=rows, reference=rows[0].artifact, ten_crop=False,
                              seconds=1.0, workers=1, batch_size=64)
    text = render([results_table(result, width=width)], width)
    assert_fits(text, width, {"100.00", "91.37", "-12.34", "87.65", "1.23e+01"})
    names = column_text(text, "artifact", "backend")
    assert all(Path(r.artifact).name in names for r in rows), text
    assert all(word in text for word in ("onnxruntime", "openvino", "PASS"))
    if "img/s" not in text:  # a narrow terminal: what is left out is said, and how to see it
        assert "--wide shows every column" in text


@pytest.mark.parametrize("width", TERMINALS)
def test_bench_skipped_reason_wraps_and_backends_stay_whole(bench_report, width):
    text = render(results_tables(bench_report, width=width), width)
    assert_fits(text, width, {"3796.12", "0.729", "830×"})
    assert "onnxruntime" in text and "resnet-deploy[tensorrt]" in text


def test_tables_printed_to_a_pipe_take_the_width_columns_says(monkeypatch):
    from resnet_deploy.tables import PIPED_WIDTH, table_console

    with contextlib.redirect_stdout(io.StringIO()):  # not a terminal
        monkeypatch.setenv("COLUMNS", "80")
        assert table_console().width == 80
        monkeypatch.delenv("COLUMNS")
        assert table_console().width == PIPED_WIDTH


def _scenario(scenario: str, backend: str, precision: str, p50: float, rate: float, *, model: str = "resnet20",
              server: bool = False):
    from resnet_deploy.bench.loadgen import ScenarioResult

    return ScenarioResult(scenario=scenario, model=model, backend=backend, precision=precision, artifact=None,
                          valid=True, mlperf_valid=False, latency_ms={"p50": p50, "p90": p50 * 3.1, "p99": p50 * 11},
                          samples_per_s=rate, queries=100, target_qps=123.4 if server else None,
                          target_latency_ms=15.0 if server else None)


@pytest.mark.parametrize("models", [("resnet20",), ("resnet20", "resnet152")])
@pytest.mark.parametrize("width", TERMINALS)
def test_loadgen_scenario_table_fits(width, models):
    from resnet_deploy.bench.scenario_report import scenario_table

    results = [_scenario(s, b, p, 23.456, 257.3, model=m, server=s == "server") for m in models
               for s in ("single-stream", "offline", "server") for b, p in (("torch", "fp32"), ("onnxruntime", "int8"))]
    text = render([scenario_table(results, width=width)], width)
    assert_fits(text, width, {"23.456", "258.016", "257.3"})
    assert all(word in text for word in ("single-stream", "onnxruntime", "VALID", "123.4", "QPS", *models))


@pytest.mark.parametrize("width", TERMINALS)
def test_sensitivity_table_keeps_layer_names_whole_and_distinct(width):
    from resnet_deploy.commands.sensitivity_cmd import sensitivity_table
    from resnet_deploy.precision.sensitivity import LayerScore, SensitivityResult

    names = ["layer2.1.conv1", "layer2.1.conv2", "layer3.2.conv1", "/layer3/layer3.2/conv2/Conv", "fc", "conv1"]
    layers = [LayerScore(node=f"n{i}", op_type="GlobalAveragePool" if name == "fc" else "Conv", block=name,
                         position=i, agreement=97.5 - i, delta_agreement=12.25 - i, mean_abs_logit_diff=0.1234 * i,
                         sqnr_db=31.5 - i) for i, name in enumerate(names)]
    result = SensitivityResult(source=Path("resnet20_cifar10.onnx"), method="percentile", images=256, data="held-out",
                               full_int8={"agreement": 85.5, "mean_abs_logit_diff": 0.4321}, layers=layers)
    text = render([sensitivity_table(result, 0, width=width)], width)
    assert_fits(text, width, {"97.50", "+12.25", "0.617"})
    column = column_text(text, "layer", "op")
    assert all(name in column for name in names), text
