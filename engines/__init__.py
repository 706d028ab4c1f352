"""Inference runtimes behind one interface (`engines.base.Engine`).

Each backend lives in its own module and imports only numpy and its own library, lazily, so a
missing optional backend (TensorRT, OpenVINO, CUDA) never breaks the others.
"""

from engines.base import BackendUnavailableError, Engine, EngineError, EngineInputError, TensorInfo

__all__ = ["BackendUnavailableError", "Engine", "EngineError", "EngineInputError", "TensorInfo"]
