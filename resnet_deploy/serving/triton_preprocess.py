"""Triton Python-backend model: encoded image bytes → the classifier's input tensor.

This file is copied verbatim into a Triton model repository as `<name>_preprocess/1/model.py`, so it imports
nothing from resnet-deploy, and nothing the stock `nvcr.io/nvidia/tritonserver:<yy.mm>-py3` image lacks beyond
Pillow: that image's Python has numpy (Triton's build.py installs it for the Python backend) but neither torch,
torchvision nor Pillow. Pillow only decodes the image (there is no JPEG decoder in numpy); the transform after it
is numpy, written to give the very tensors `resnet_deploy.data.eval_transform` (torchvision v2) gives, bit for bit
(a test holds both against each other on real JPEGs):

- resize the shorter side: torchvision resizes a uint8 image with antialiasing in fixed point (the separable
  Pillow-style filter, int16 weights whose precision depends on the largest weight, horizontal pass first, each
  pass rounded and clamped to uint8). `_resize_axis` is that arithmetic. (torchvision takes this uint8 path on
  x86 CPUs with AVX2 and on ARM; elsewhere its bilinear resize runs in float and may differ by one grey level.)
- centre-crop (zero padding when the image is smaller), scale by 1/255 in float32, subtract the mean, divide by
  the std, in float32 and in that order, as torchvision does.

The card's preprocessing arrives as the JSON model-config parameter `preprocessing`.
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from typing import Any

import numpy as np

PREPROCESSING_PARAMETER = "preprocessing"
PILLOW_MISSING = ("the preprocessing model decodes images with Pillow, which this server's Python lacks (the stock "
                  "tritonserver image has numpy only): serve from an image built FROM it with `RUN pip install "
                  "pillow`")


def _triangle(x: float) -> float:
    return max(0.0, 1.0 - abs(x))


def _keys_cubic(x: float) -> float:  # a = -0.5, as Pillow and torchvision's antialiased bicubic use
    a, x = -0.5, abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return 0.0


FILTERS = {"bilinear": (1.0, _triangle), "bicubic": (2.0, _keys_cubic)}


@lru_cache(maxsize=64)
def _weights(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, int]:
    """The (out, in) int64 matrix of fixed-point weights and their precision in bits."""
    if interpolation not in FILTERS:
        raise ValueError(f"interpolation {interpolation!r}: the server-side preprocessing knows "
                         f"{', '.join(FILTERS)}")
    half, kernel = FILTERS[interpolation]
    scale = in_size / out_size
    support = half * scale if scale >= 1.0 else half
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    rows: list[tuple[int, list[float]]] = []
    for i in range(out_size):
        center = scale * (i + 0.5)
        low = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - low
        taps = [kernel((j + low - center + 0.5) * inverse) for j in range(count)]
        total = 0.0
        for tap in taps:  # summed in order, in double, as the reference does
            total += tap
        rows.append((low, [tap / total for tap in taps] if total != 0.0 else taps))
    largest = max((max(taps) for _, taps in rows if taps), default=0.0)
    precision = 0
    while precision < 22 and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    matrix = np.zeros((out_size, in_size), np.int64)
    for i, (low, taps) in enumerate(rows):
        for j, tap in enumerate(taps):
            scaled = tap * (1 << precision)
            matrix[i, low + j] = int(-0.5 + scaled) if scaled < 0 else int(0.5 + scaled)
    return matrix, precision


def _resize_axis(image: np.ndarray, size: int, axis: int, interpolation: str) -> np.ndarray:
    matrix, precision = _weights(image.shape[axis], size, interpolation)
    moved = np.moveaxis(image, axis, 0).astype(np.int64)
    flat = matrix @ moved.reshape(moved.shape[0], -1) + (1 << (precision - 1))
    out = np.clip(flat >> precision, 0, 255).astype(np.uint8).reshape((size, *moved.shape[1:]))
    return np.moveaxis(out, 0, axis)


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """torchvision's Resize(int): the shorter side to `short`, the longer one scaled and truncated."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def transform(rgb: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """An HWC uint8 RGB image → the card's CHW float32 input."""
    size = int(preprocessing["input_size"])
    height, width = rgb.shape[:2]
    new_h, new_w = resized_size(height, width, int(preprocessing.get("resize_size") or size))
    interpolation = str(preprocessing.get("interpolation", "bilinear"))
    if new_w != width:
        rgb = _resize_axis(rgb, new_w, 1, interpolation)
    if new_h != height:
        rgb = _resize_axis(rgb, new_h, 0, interpolation)
    if new_h < size or new_w < size:  # torchvision pads with zeros before a centre crop larger than the image
        top, left = (size - new_h) // 2 if new_h < size else 0, (size - new_w) // 2 if new_w < size else 0
        padded = np.zeros((max(size, new_h), max(size, new_w), 3), np.uint8)
        padded[top:top + new_h, left:left + new_w] = rgb
        rgb, (new_h, new_w) = padded, padded.shape[:2]
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    crop = rgb[top:top + size, left:left + size]
    scaled = crop.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255)
    mean = np.asarray(preprocessing["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(preprocessing["std"], np.float32).reshape(3, 1, 1)
    return (scaled - mean) / std


def decode(image_bytes: bytes) -> np.ndarray:
    """Encoded image bytes → HWC uint8 RGB (Pillow: the only decoder here)."""
    from PIL import Image

    with Image.open(io.BytesIO(image_bytes)) as image:
        return np.asarray(image.convert("RGB"))


def preprocess(image_bytes: bytes, preprocessing: dict[str, Any]) -> np.ndarray:
    """Decode one encoded image; resize the shorter side, centre-crop, scale to [0, 1], normalize → CHW float32."""
    return transform(decode(image_bytes), preprocessing)


class TritonPythonModel:
    """The Python backend's entry points; `triton_python_backend_utils` exists only inside the server."""

    def initialize(self, args: dict[str, Any]) -> None:
        try:  # fail the load, not every request, where Pillow is missing
            import PIL  # noqa: F401
        except ImportError:
            raise RuntimeError(PILLOW_MISSING) from None
        config = json.loads(args["model_config"])
        self.preprocessing = json.loads(config["parameters"][PREPROCESSING_PARAMETER]["string_value"])
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
                batch = np.stack([preprocess(bytes(encoded), self.preprocessing) for encoded in images])
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(self.output_name, batch)]))
            except Exception as exc:  # an undecodable image fails its own request, not the batch
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocessing: {exc}")))
        return responses
