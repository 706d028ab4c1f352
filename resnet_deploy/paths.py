"""Guards on the files a command reads and writes, checked before any work is done.

- an input must be a regular, readable file: a FIFO or `/dev/zero` would hang the hash, a folder fails
  far from the flag that named it;
- an output must not be one of the inputs (same path, or the same file through a link), nor a file an
  input consists of (an ONNX model's external data, an OpenVINO .bin, a manifest): writing it would
  destroy the input;
- an output must not lie inside a data set the command reads: it would replace an image, or add a file
  or folder the data set then reads as its own;
- an output's folder must be writable: a permission or read-only error found after minutes of work
  wastes them.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from resnet_deploy.errors import UsageError

PathLike = str | os.PathLike[str]


def require_input_file(path: PathLike) -> Path:
    """`path` itself if it is a regular file we can read; else a UsageError saying what it is."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{path}: is a folder; give a file")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{path}: not a regular file ({_kind(info.st_mode)}); give a file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: not readable (permission denied)")
    return path


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def same_file(a: PathLike, b: PathLike) -> bool:
    """The same file: one resolved path, or one inode through a hard or symbolic link."""
    with contextlib.suppress(OSError):
        if os.path.samefile(a, b):
            return True
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return os.path.abspath(a) == os.path.abspath(b)


def companions(path: PathLike) -> list[Path]:
    """Every file an input consists of: itself, its `<name>.json` manifest, an OpenVINO .xml's .bin, and the
    external-data files an ONNX model names (writing any of them destroys the model)."""
    path = Path(path)
    found = [path, path.with_name(path.name + ".json")]
    if path.suffix.lower() == ".xml":
        found.append(path.with_suffix(".bin"))
    if path.suffix.lower() == ".onnx":
        found += [path.parent / location for location in onnx_external_locations(path)]
    return found


def onnx_external_locations(path: PathLike) -> list[str]:
    """The external-data locations an ONNX model's initializers name (none if it is no readable ONNX: the
    command that opens it says so, with its own message)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX model, or onnx missing: nothing more to protect than the file itself
        return []
    locations: list[str] = []
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value and entry.value not in locations:
                locations.append(entry.value)
    return locations


def inside(path: PathLike, folder: PathLike) -> bool:
    """`path` is `folder` or lies under it (links resolved)."""
    try:
        target, root = Path(path).resolve(), Path(folder).resolve()
    except (OSError, RuntimeError):
        target, root = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return target == root or root in target.parents


def refuse_writing_into_data(outputs: Iterable[tuple[str, PathLike | None]],
                             data: Iterable[PathLike | None]) -> None:
    """Refuse an output (flag, path) inside a data set the command reads: it would replace an image, or add a
    file or folder the data set then reads as one of its own."""
    folders = [Path(d) for d in data if d is not None and Path(d).is_dir()]
    for flag, output in outputs:
        if output is None:
            continue
        for folder in folders:
            if inside(output, folder):
                raise UsageError(f"{flag} {output} is inside the data set {folder}; writing there would change the "
                                 "images the command reads: choose a path outside it")


def refuse_overwriting_inputs(outputs: Iterable[tuple[str, PathLike | None]],
                              inputs: Iterable[PathLike | None]) -> None:
    """Refuse an output (flag, path) that is one of the inputs (or their companions), or another output."""
    named = [(flag, Path(p)) for flag, p in outputs if p is not None]
    if not named:
        return
    sources = [c for p in inputs if p is not None for c in companions(p)]
    for i, (flag, output) in enumerate(named):
        for source in sources:
            if same_file(output, source):
                raise UsageError(f"{flag} {output} is the input {source}; writing it would destroy the input: "
                                 "choose another path")
        for other_flag, other in named[:i]:
            if same_file(output, other):
                raise UsageError(f"{flag} {output} is also {other_flag}; give each output its own path")


def require_writable_folder(output: PathLike) -> None:
    """The folder `output` goes into (or the nearest one that exists: writers create the rest) takes files."""
    output = Path(output)
    if output.is_dir():
        raise UsageError(f"{output}: is a folder; give a file name")
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{output}: cannot write here: {folder} is not a folder")
    try:  # the real test: permissions, read-only mounts and /proc all answer it
        fd, probe = tempfile.mkstemp(prefix=".resnet-deploy-probe.", dir=folder)
    except OSError as exc:
        raise UsageError(f"{output}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_io(*, inputs: Iterable[PathLike | None] = (), outputs: Iterable[tuple[str, PathLike | None]] = (),
             data: Iterable[PathLike | None] = ()) -> None:
    """Every guard at once, before a command does any work: inputs are readable regular files, no output
    overwrites an input (or a file it consists of) or another output, none lies inside a `data` folder the
    command reads, and every output's folder is writable."""
    inputs = [p for p in inputs if p is not None]
    outputs = [(flag, p) for flag, p in outputs if p is not None]
    for path in inputs:
        require_input_file(path)
    refuse_overwriting_inputs(outputs, inputs)
    refuse_writing_into_data(outputs, data)
    for _, path in outputs:
        require_writable_folder(path)
