"""Triton Python-backend model: encoded image bytes → the classifier's input tensor.

This file is copied verbatim into a Triton model repository as `<name>_preprocess/1/model.py`, so it imports
nothing from resnet-deploy: `preprocess()` is the model card's evaluation transform written out with the same
torchvision v2 steps that `resnet_deploy.data.eval_transform` uses (a test checks that both give identical tensors
on real JPEGs), and it can be imported without Triton. The card's preprocessing arrives as the JSON model-config
parameter `preprocessing`.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

PREPROCESSING_PARAMETER = "preprocessing"


def preprocess(image_bytes: bytes, preprocessing: dict[str, Any]) -> np.ndarray:
    """Decode one encoded image; resize the shorter side, centre-crop, scale to [0, 1], normalize → CHW float32."""
    import torch
    from PIL import Image
    from torchvision.transforms import InterpolationMode, v2

    with Image.open(io.BytesIO(image_bytes)) as image:
        rgb = image.convert("RGB")
    size = int(preprocessing["input_size"])
    transform = v2.Compose([
        v2.ToImage(),
        v2.Resize(preprocessing.get("resize_size") or size,
                  interpolation=InterpolationMode(preprocessing.get("interpolation", "bilinear")), antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(preprocessing["mean"]), list(preprocessing["std"])),
    ])
    return transform(rgb).numpy()


class TritonPythonModel:
    """The Python backend's entry points; `triton_python_backend_utils` exists only inside the server."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.preprocessing = json.loads(config["parameters"][PREPROCESSING_PARAMETER]["string_value"])
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            batch = np.stack([preprocess(bytes(encoded), self.preprocessing) for encoded in images])
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, batch)]))
        return responses
