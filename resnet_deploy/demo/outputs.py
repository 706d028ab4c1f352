"""The demo's `--output` folder: what a run writes there, and `--force` to start over in a folder that already holds
one (a second run would otherwise stop at training, which refuses to overwrite a run's last.pt)."""

from __future__ import annotations

import shutil
from pathlib import Path

from resnet_deploy.errors import UsageError

#: everything a demo run writes under --output; only these are ever removed
DEMO_OUTPUTS = ("train", "artifacts", "report.md", "validate.md", "bench.md", "bench.png", "cache", "data")
#: outputs that mean "a run already happened here" (data/ and cache/ are reused as they are)
RUN_OUTPUTS = DEMO_OUTPUTS[:6]


def claim_out_folder(out: Path, *, force: bool, keep: Path | None = None) -> list[Path]:
    """Make `out` ready for a fresh demo run; returns what `force` removed.

    A folder holding an earlier run is refused unless `force`, which removes only the demo's own outputs
    (DEMO_OUTPUTS), so pointing --output at a folder with other files never deletes them; nor is `keep` (the
    user's --data) removed when it lies inside one of them.
    """
    found = [out / name for name in RUN_OUTPUTS if (out / name).exists()]
    if not found:
        return []
    if not force:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found)
        raise UsageError(f"{out} already holds a demo run ({names}); pass --force to start over (replacing that "
                         "run's outputs there), or --output NEW_FOLDER")
    removed = []
    kept = keep.resolve() if keep is not None else None
    for path in (out / name for name in DEMO_OUTPUTS):
        if kept is not None and (kept == path.resolve() or path.resolve() in kept.parents):
            continue
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(path)
    return removed
