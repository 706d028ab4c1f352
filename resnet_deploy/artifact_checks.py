"""Checks on an artifact's files before a runtime sees them, so a broken artifact fails with a named file
and exit 2 (UsageError) whatever command opened it, never a runtime's own message.

- every file the manifest hashed (OpenVINO `.xml` and `.bin`, an ONNX Runtime artifact) still has that
  hash: a replaced file would otherwise run under the old card (TensorRT plans check `plan_sha256` when
  they are deserialized);
- an OpenVINO `.xml` has its `.bin`; an ONNX model has its external-data files;
- an ONNX model's input takes the image size its card promises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from resnet_deploy.errors import UsageError

CardT = TypeVar("CardT")

# manifest key → the file it hashes, relative to the artifact
HASHED_FILES = {"sha256": "", "xml_sha256": "", "bin_sha256": ".bin"}


def check_artifact_files(path: str | Path) -> None:
    """Refuse an artifact whose companion files are missing or differ from what its manifest recorded."""
    from resnet_deploy.atomic import sha256_file

    artifact = Path(path)
    suffix = artifact.suffix.lower()
    if suffix == ".xml" and not artifact.with_suffix(".bin").is_file():
        raise UsageError(f"{artifact.with_suffix('.bin')}: missing; the OpenVINO model {artifact.name} keeps its "
                         "weights there (copy the .xml and .bin together, or rebuild with build-engine)")
    if suffix == ".onnx":
        header = _load_onnx_header(artifact)
        check_onnx_opset(header, artifact)
        check_onnx_external_data(artifact, header)
    manifest = _manifest(artifact)
    if manifest is None:
        return
    for key, companion_suffix in HASHED_FILES.items():
        expected = manifest.get(key)
        if not isinstance(expected, str):
            continue
        file = artifact.with_suffix(companion_suffix) if companion_suffix else artifact
        if sha256_file(file) != expected:
            raise UsageError(f"{file}: changed since its manifest {artifact.name}.json was written (sha256 "
                             "differs); it is not the file that was built and checked: rebuild it with "
                             "`resnet-deploy build-engine`")


def _manifest(artifact: Path) -> dict[str, Any] | None:
    return load_manifest(artifact.with_name(artifact.name + ".json"))


def load_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at `path` (None if there is none); a damaged one (not UTF-8, not JSON, not an object,
    nested past the recursion limit) is a UsageError naming it."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: unreadable manifest ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: unreadable manifest (not UTF-8 text: byte {exc.start}); rebuild the artifact "
                         "with `resnet-deploy build-engine`") from None
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else f"not JSON: {exc}"
        raise UsageError(f"{path}: unreadable manifest ({reason}); rebuild the artifact with "
                         "`resnet-deploy build-engine`") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: unreadable manifest (a JSON {type(data).__name__}, not an object); rebuild the "
                         "artifact with `resnet-deploy build-engine`")
    return data


def metadata_of(model: Any, path: str | Path) -> dict[str, str]:
    """An ONNX model's metadata_props as a dict; protobuf decodes each string when it is read, so bytes that are
    not UTF-8 (a damaged card) fail there: a UsageError naming the file, not a UnicodeDecodeError."""
    props: dict[str, str] = {}
    for index, prop in enumerate(model.metadata_props):
        key, value = prop.key, prop.value  # protobuf hands back bytes for a string that is not UTF-8
        for text in (key, value):
            if isinstance(text, bytes):
                try:
                    text.decode("utf-8")
                except UnicodeDecodeError as exc:
                    name = repr(key) if isinstance(key, str) else f"#{index}"
                    raise UsageError(f"{path}: the ONNX metadata entry {name} is not UTF-8 text (byte {exc.start}); "
                                     "the model card is damaged: re-export or re-import the model") from None
        props[str(key)] = value if isinstance(value, str) else value.decode("utf-8")
    return props


def _load_onnx_header(path: Path) -> Any:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError for non-ONNX bytes
        raise UsageError(f"{path}: not a readable ONNX model ({exc})") from None
    return require_graph(model, path)


def require_graph(model: Any, path: str | Path) -> Any:
    """`model`, if it has a graph: protobuf reads an empty file (or any bytes that happen to parse) as an
    empty ModelProto without complaint, which would pass for a model with nothing in it."""
    if not model.HasField("graph"):
        size = Path(path).stat().st_size if Path(path).is_file() else None
        what = "an empty file (0 bytes)" if size == 0 else "not an ONNX model (it holds no graph)"
        raise UsageError(f"{path}: {what}; give the .onnx file an exporter wrote")
    return model


def check_onnx_external_data(path: str | Path, model: Any = None) -> None:
    """Every external-data file an ONNX model names is there, and is one the onnx library will read: a relative
    location inside the model's folder (subfolders allowed), not a symbolic link, holding the bytes the tensor
    claims. Else one error naming the file, exit 2, whichever command opened the model (the library's own
    refusals are exceptions of its own, and ONNX Runtime's differ again)."""
    from onnx import TensorProto

    path = Path(path)
    model = model if model is not None else _load_onnx_header(path)
    folder = path.parent
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location") or ""
        where = f"the ONNX model {path.name} keeps its weights (tensor {tensor.name}) in"
        if location and (Path(location).is_absolute() or location.startswith(("/", "\\"))):
            raise UsageError(f"{path}: {where} the absolute path {location}; external data must lie beside the "
                             "model (a relative location): re-save the model with its weights beside it")
        file = folder / location
        if location and not _within(file, folder):
            raise UsageError(f"{path}: {where} {location}, outside the model's folder {folder}; external data must "
                             "lie beside the model: copy the weights there and re-save the model")
        if location and file.is_symlink():
            raise UsageError(f"{file}: a symbolic link; {where} this file, and ONNX reads external data only from "
                             "plain files beside the model: copy the real file there")
        if not location or not file.is_file():
            raise UsageError(f"{file}: missing; {where} this external-data file: copy it beside the model")
        _check_extent(file, tensor.name, entries)


def _within(file: Path, folder: Path) -> bool:
    try:
        return folder.resolve() in file.resolve().parents
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _check_extent(file: Path, tensor: str, entries: dict[str, str]) -> None:
    """offset + length lie within the file (the library would fail reading past its end)."""
    try:
        offset, length = int(entries.get("offset") or 0), entries.get("length")
        length_value = int(length) if length is not None else None
    except ValueError:
        raise UsageError(f"{file}: the external-data offset/length of tensor {tensor} are not numbers "
                         f"({entries.get('offset')!r}, {entries.get('length')!r}); the model is damaged") from None
    size = file.stat().st_size
    end = offset + (length_value or 0)
    if offset < 0 or (length_value is not None and length_value < 0) or offset > size or end > size:
        raise UsageError(f"{file}: {size} bytes, but tensor {tensor} claims bytes {offset} to {end} of it; the "
                         "weights file is truncated or belongs to another model")


def check_onnx_opset(model: Any, path: str | Path) -> None:
    """The model's ONNX operator set is one this onnx knows (opset 99 would fail deep inside a runtime)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > newest:
            raise UsageError(f"{path}: the model imports ONNX opset {entry.version}, but the newest this onnx "
                             f"({onnx.__version__}) knows is {newest}: re-export it at opset {newest} or lower "
                             "(`resnet-deploy export` writes 20)")


def check_onnx_input(path: str | Path, card: CardT, model: Any = None) -> CardT:
    """`card`, once the ONNX graph's input is (batch, 3, S, S) for the card's input size S."""
    path = Path(path)
    model = model if model is not None else _load_onnx_header(path)
    if not model.graph.input:
        raise UsageError(f"{path}: the ONNX graph has no input")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    size = card.preprocessing.input_size
    wanted = [3, size, size]
    if len(shape) != 4 or any(got is not None and got != want for got, want in zip(shape[1:], wanted, strict=False)):
        shown = "x".join("?" if d is None else str(d) for d in shape)
        raise UsageError(f"{path}: the ONNX graph's input is [{shown}] but its model card says 3x{size}x{size} "
                         "images; the card and the graph disagree (re-export the model)")
    return card
