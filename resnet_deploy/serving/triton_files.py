"""A Triton model repository on disk: each model folder staged beside its place and renamed into it, so a
failure never leaves a half-written model (nor, with --force, neither the old one nor the new)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_deploy.artifacts import manifest_path
from resnet_deploy.errors import UsageError

if TYPE_CHECKING:
    from resnet_deploy.serving.model_io import ArtifactIO


@dataclass
class ModelEntry:
    """One model folder of the repository, ready to write."""

    name: str
    config: Any  # model_config_pb2.ModelConfig
    files: dict[str, Path] = field(default_factory=dict)  # path inside the model folder → source file
    texts: dict[str, str] = field(default_factory=dict)  # path inside the model folder → content

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "platform": self.config.platform or None, "backend": self.config.backend or None,
                "max_batch_size": self.config.max_batch_size,
                "files": sorted(["config.pbtxt", *self.files, *self.texts])}


def refuse_replacing_inputs(artifacts: list[ArtifactIO], replaced: list[Path]) -> None:
    """--force replaces model folders: never one that holds a file being read (the input would be deleted)."""
    for folder in replaced:
        root = folder.resolve()
        for io in artifacts:
            for file in (*io.files, manifest_path(io.path)):
                if file.exists() and file.resolve().is_relative_to(root):
                    raise UsageError(f"{file}: inside the model folder {folder} that --force would replace; copy the "
                                     "artifact out of the repository first, or write to another --output")


def write_model(repository: Path, entry: ModelEntry, text: str) -> None:
    """Write one model folder (config.pbtxt, its texts and files) staged beside it, then renamed into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=repository))
    try:
        (staging / "config.pbtxt").write_text(text)
        for relative, content in entry.texts.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_text(content)
        for relative, source in entry.files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / relative)
        staging.chmod(0o777 & ~_umask())
        final = repository / entry.name
        if final.exists():  # --force: move the old one aside first, so a failure never leaves neither
            old = final.with_name(f".{entry.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            staging.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
