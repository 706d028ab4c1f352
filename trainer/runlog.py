"""`metrics.jsonl`: one JSON object per evaluation, the record the plots and reports are drawn from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resnet_deploy.atomic import write_text
from resnet_deploy.errors import UsageError

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a run folder (or of a metrics.jsonl file itself)."""
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{path}: no {METRICS_FILE} (point at a training run's --output folder)")
    records = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UsageError(f"{file}:{number}: not a JSON line ({exc})") from None
    return records


class MetricsLog:
    """Appends records; the file is rewritten atomically each time so a crash never leaves half a line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = read_metrics(path) if path.is_file() else []

    def keep_until(self, iteration: int) -> None:
        """On resume: forget evaluations the checkpoint never saw (after its iteration)."""
        kept = [r for r in self.records if int(r.get("iteration", 0)) <= iteration]
        if len(kept) != len(self.records):
            self.records = kept
            self._write()

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._write()

    def _write(self) -> None:
        write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))
