"""8-bit vs 7-bit INT8 weights on this CPU: ONNX Runtime's integer kernels, the Q/DQ arithmetic and OpenVINO, each
against the FP32 model, on labelled test images. The figures of docs/BENCHMARKS.md (2026-12-06, issue 23).

Usage: python scripts/int8_weight_bits.py MODEL.onnx DATA_ROOT N   (DATA_ROOT holds train/ and test/)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from resnet_deploy.compare import compare_logits
from resnet_deploy.data import open_dataset, sample_labelled
from resnet_deploy.onnx_check import arithmetic_session, run_logits, session
from resnet_deploy.precision.calibration import load_calibration_images
from resnet_deploy.precision.common import read_source
from resnet_deploy.precision.isa import this_cpu
from resnet_deploy.precision.qdq import Quantizer, activation_ranges, pre_process
from resnet_deploy.targets.onnxruntime import int8_activations_to_uint8


def openvino_logits(path: Path, images: np.ndarray, size: int) -> np.ndarray:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape([-1, 3, size, size])
    request = core.compile_model(model, "CPU").create_infer_request()
    return np.concatenate([request.infer({0: images[i:i + 64]})[0] for i in range(0, len(images), 64)])


def main(model: str, data: Path, count: int) -> dict:
    src = read_source(model)
    pre = src.card.preprocessing
    calib = load_calibration_images(data / "train", pre, samples=512, check_samples=16)
    images, labels = sample_labelled(open_dataset(data, "test"), pre, count, 0)
    reference = run_logits(session(src.path), images, batch=64)
    out: dict = {"cpu": this_cpu().to_dict(), "images": count,
                 "fp32_top1": float((reference.argmax(1) == labels).mean() * 100)}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prepared = tmp / "prepared.onnx"
        pre_process(src.path, prepared)
        ranges, _ = activation_ranges(src, calib, "percentile", prepared, tmp / "cache.onnx", 64, False, 512, None)
        for bits in (8, 7):
            folder = tmp / f"bits{bits}"
            folder.mkdir()
            qdq = Quantizer(prepared, ranges, "percentile", folder, weight_bits=bits).build([])
            cpu_form = onnx.load(str(qdq))
            int8_activations_to_uint8(cpu_form)  # what the ONNX Runtime target writes for x86
            u8 = folder / "u8.onnx"
            onnx.save(cpu_form, str(u8))
            rows = {"ort_kernels": run_logits(session(u8), images, batch=64),
                    "qdq_arithmetic": run_logits(arithmetic_session(qdq), images, batch=64),
                    "openvino": openvino_logits(qdq, images, pre.input_size)}
            out[f"{bits}-bit"] = {name: {"agreement": round(compare_logits(reference, logits).agreement, 2),
                                         "top1": round(float((logits.argmax(1) == labels).mean() * 100), 2)}
                                  for name, logits in rows.items()}
            print(bits, json.dumps(out[f"{bits}-bit"]), file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])), indent=1))
