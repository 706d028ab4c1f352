"""Triton Python-backend model that runs an artifact through resnet-deploy's own engine (`open_engine`): the same
inference as `validate` and `bench`, for a Triton without the artifact's native backend (the `nvidia-pytriton`
wheel's server, a CPU server without an OpenVINO backend build) and for PyTorch cards, which no Triton backend
reads.

Copied into a repository as `<name>/1/model.py` beside the artifact's files; the server's Python must be able to
import resnet_deploy and the artifact's runtime (`resnet-deploy serve` starts the server so that it can). The
artifact's file name and the engine options arrive as model-config parameters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ARTIFACT_PARAMETER = "artifact"
THREADS_PARAMETER = "threads"
# `resnet-deploy serve` only: the folder its own resnet_deploy was imported from, so the server runs that code (the
# stub's embedded Python ignores PYTHONPATH).
SOURCE_PARAMETER = "resnet_deploy_source"


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        if parameters.get(SOURCE_PARAMETER):
            sys.path.insert(0, parameters[SOURCE_PARAMETER])
        from resnet_deploy.artifacts import open_engine

        folder = Path(args["model_repository"]) / str(args["model_version"])
        threads = int(parameters.get(THREADS_PARAMETER) or 0) or None
        self.engine = open_engine(folder / parameters[ARTIFACT_PARAMETER], threads=threads)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        import numpy as np
        import triton_python_backend_utils as pb_utils

        arrays = [pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy() for request in requests]
        try:  # the dynamic batcher's requests run as one batch, then are split back
            logits = self.engine.infer(np.ascontiguousarray(np.concatenate(arrays), dtype=np.float32))
        except Exception as exc:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference: {exc}")) for _ in requests]
        responses, start = [], 0
        for array in arrays:
            part = np.ascontiguousarray(logits[start:start + len(array)], dtype=np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)]))
            start += len(array)
        return responses

    def finalize(self) -> None:
        self.engine.close()
