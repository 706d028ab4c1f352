"""The Q/DQ machinery that INT8, the mixed-precision search and the sensitivity ranking share.

ONNX Runtime's pre-processing, its static quantization in QDQ format from cached activation ranges, the
optional FP16 remainder, and `Quantizer`: Q/DQ models of one prepared source with any nodes left out,
built once per set. It sits below `int8.py`, `mixed.py` and `sensitivity.py`, which all import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_deploy.precision.calibration import (
    CacheStatus,
    CalibrationImages,
    ProgressFn,
    cache_key,
    cache_path_for,
    compute_ranges,
    read_cache,
    write_cache,
    write_ort_cache,
)
from resnet_deploy.precision.common import INT8_EXTRA_OPTIONS, _quiet, _Source


@dataclass
class Quantizer:
    """Q/DQ models of one prepared source from one set of activation ranges."""

    prepared: Path  # the source after ONNX Runtime's pre-processing
    ranges: dict[str, Any]
    method: str
    tmp: Path
    fp16_remainder: bool = False
    weight_bits: int = 8  # 7 for CPUs whose u8×s8 kernels saturate (precision/isa.py)
    _built: dict[tuple[str, ...], Path] = field(default_factory=dict)
    float_nodes: list[Any] = field(default_factory=list, init=False)  # kept out by rule (`float_by_rule`), always

    def __post_init__(self) -> None:
        import onnx

        from resnet_deploy.precision.float_by_rule import float_by_rule

        self.float_nodes = float_by_rule(onnx.load(str(self.prepared), load_external_data=False))

    @classmethod
    def prepare(cls, src: Any, calib: Any, method: str, tmp: Path, base: Path, batch: int, static: bool,
                samples: int, progress: Any = None, fp16_remainder: bool = False, weight_bits: int = 8) -> Quantizer:
        """Pre-process the source and take the method's ranges from the calibration cache (or compute them)."""
        prepared = tmp / "prepared.onnx"
        pre_process(src.path, prepared)
        ranges, _ = activation_ranges(src, calib, method, prepared, base, batch, static, samples, progress)
        return cls(prepared, ranges, method, tmp, fp16_remainder, weight_bits=weight_bits)

    def build(self, exclude: list[str]) -> Path:
        """The Q/DQ model with the `exclude`d nodes left in higher precision (built once per set)."""
        from resnet_deploy.precision.float_by_rule import WEIGHT_OPS

        key = tuple(sorted(exclude))
        if key not in self._built:
            output = self.tmp / f"{self.method}-{len(self._built)}.onnx"
            by_rule = [n.node for n in self.float_nodes if n.node not in key]
            quantize_qdq(self.prepared, output, self.ranges, self.method, self.tmp, exclude=[*key, *by_rule],
                         op_types=list(WEIGHT_OPS) if self.float_nodes else None, weight_bits=self.weight_bits)
            if self.fp16_remainder:
                convert_remainder_fp16(output)
            self._built[key] = output
        return self._built[key]


def activation_ranges(src: _Source, calib: CalibrationImages, method: str, prepared: Path, base: Path,
                      batch: int, static: bool, samples: int,
                      progress: ProgressFn | None) -> tuple[dict[str, Any], CacheStatus]:
    """The method's activation ranges: from the user's cache folder when its key matches, else computed."""
    key = cache_key(source_sha256=src.sha256, images=calib, method=method, samples=samples)
    path = cache_path_for(key, method)  # the user's cache folder (`base` is no longer where caches live)
    ranges, status = read_cache(path, key)
    if ranges is None:
        ranges = compute_ranges(prepared, calib.images, method, input_name=src.input_name, batch=batch,
                                static=static, progress=progress)
        if not write_cache(path, key, ranges):
            status = "not written (cache folder not writable)"
    elif progress is not None:
        progress(f"calibrate {method} (cached)", len(calib.images), len(calib.images))
    return ranges, CacheStatus(path, status)


def pre_process(source: Path, prepared: Path) -> None:
    """ONNX Runtime's recommended step before quantization: shape inference and graph cleanup."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        try:
            quant_pre_process(str(source), str(prepared))
        except Exception:  # symbolic shape inference fails on some graphs; ONNX's own inference then suffices
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)


def quantize_qdq(prepared: Path, output: Path, ranges: dict[str, Any], method: str, tmp: Path,
                 exclude: list[str] | None = None, op_types: list[str] | None = None, weight_bits: int = 8) -> None:
    """`op_types` None: every op ONNX Runtime can quantize (its default). `weight_bits` 7: ORT's reduce_range,
    which for symmetric int8 weights gives [-64, 64] (activations keep their 8 bits)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    cache = tmp / f"ranges-{method}.json"
    write_ort_cache(ranges, cache)
    ort_method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
                  "percentile": CalibrationMethod.Percentile}[method]
    with _quiet():
        quantize_static(
            str(prepared), str(output), None, quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=weight_bits == 7,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=ort_method,
            extra_options=dict(INT8_EXTRA_OPTIONS), calibration_cache_path=str(cache),
            nodes_to_exclude=list(exclude or []), op_types_to_quantize=op_types,
        )


def convert_remainder_fp16(path: Path) -> None:
    """Convert what is left in float32 (activations between Q/DQ pairs, scales, biases) to FP16, I/O kept."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(path))
    with _quiet():
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(path))


