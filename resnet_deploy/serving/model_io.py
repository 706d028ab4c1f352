"""What a serving system needs to know about an artifact: its one input and one output (names, element types,
shapes with -1 where dynamic), the batch sizes it accepts, the files that make it up, and its model card.

Read from the artifact itself: the ONNX graph, the OpenVINO IR (through OpenVINO), or the TensorRT manifest
(a plan cannot be read without TensorRT and a GPU; its manifest records the network's I/O and batch profile).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from resnet_deploy.artifacts import artifact_card, backend_for, manifest_path, read_manifest
from resnet_deploy.card import ModelCard
from resnet_deploy.errors import UsageError

# Element types as numpy names, from each runtime's own spelling.
_OPENVINO_TYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i8": "int8", "u8": "uint8",
                   "i32": "int32", "i64": "int64"}
_TENSORRT_TYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
                   "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name: float32, float16, ...
    shape: tuple[int, ...]  # batch first; -1 where dynamic


@dataclass(frozen=True)
class ArtifactIO:
    path: Path
    backend: str  # onnxruntime | openvino | tensorrt
    files: tuple[Path, ...]  # what a repository must hold: the model, plus the IR weights for OpenVINO
    input: TensorSpec
    output: TensorSpec
    batch_range: tuple[int, int] | None  # (min, max) the artifact accepts; None: any batch
    compute_capability: str | None  # TensorRT plans only
    card: ModelCard | None
    manifest: dict[str, Any] | None = None  # the sidecar manifest, where there is one

    @property
    def folder(self) -> Path:
        return self.path.parent

    def relative(self, file: Path) -> str:
        """A file of the artifact, as the path its model names it by (ONNX external data may sit in a subfolder)."""
        return file.relative_to(self.folder).as_posix()

    @property
    def tensorrt_version(self) -> str | None:
        value = (self.manifest or {}).get("tensorrt_version")
        return str(value) if value else None

    @property
    def version_compatible(self) -> bool:
        options = (self.manifest or {}).get("build_options")
        return bool(isinstance(options, dict) and options.get("version_compatible"))

    @property
    def static_batch(self) -> int | None:
        if self.batch_range is not None and self.batch_range[0] == self.batch_range[1]:
            return self.batch_range[0]
        return None


def read_artifact_io(path: str | Path, *, allow_torch: bool = False) -> ArtifactIO:
    """The artifact's I/O, once every file it consists of is checked: the hashes its manifest recorded (an edited
    .bin, a plan that is not the one built, are refused), and ONNX external data that stays inside the model's
    folder as plain files (a symlink, an absolute or escaping location is refused). `allow_torch`: PyTorch cards
    too (served through resnet-deploy's engine; no Triton backend reads them)."""
    from resnet_deploy.artifact_checks import check_artifact_files

    artifact = Path(path)
    if not artifact.is_file():
        raise UsageError(f"{artifact}: no such file")
    backend = backend_for(artifact)
    if backend == "torch" and not allow_torch:
        raise UsageError(f"{artifact}: a PyTorch checkpoint is not a native Triton artifact; export it to ONNX "
                         "first (`resnet-deploy export`), build an engine (`resnet-deploy build-engine`), or serve it "
                         "through resnet-deploy's engine (`--backend python`)")
    if backend != "torch":
        check_artifact_files(artifact)
    # The formats this module reads I/O from; any other declared backend's artifact: from its card (as PyTorch's).
    reader = {"torch": _torch_io, "onnxruntime": _onnx_io, "openvino": _openvino_io, "tensorrt": _tensorrt_io}
    io = reader.get(backend, _card_io)(artifact)
    manifest = read_manifest(artifact) if backend != "torch" else None
    return replace(io, manifest=manifest if isinstance(manifest, dict) and manifest else None)


def _torch_io(path: Path) -> ArtifactIO:
    return _card_io(path)


def _card_io(path: Path) -> ArtifactIO:
    """I/O from the model card: a float32 image batch in, the class logits out (PyTorch, and any declared backend
    whose artifact this module has no reader for)."""
    card = artifact_card(path)
    size = card.preprocessing.input_size
    return ArtifactIO(path, backend_for(path), (path,), TensorSpec("input", "float32", (-1, 3, size, size)),
                      TensorSpec("logits", "float32", (-1, card.num_classes)), None, None, card)


def _card_or_none(path: Path) -> ModelCard | None:
    try:
        return artifact_card(path)
    except UsageError:
        return None


def _one(items: list[Any], what: str, path: Path) -> Any:
    if len(items) != 1:
        raise UsageError(f"{path}: an image classifier has one {what}, this model has {len(items)}")
    return items[0]


def _onnx_io(path: Path) -> ArtifactIO:
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError / ValueError on bytes that are not ONNX
        raise UsageError(f"{path}: not a readable ONNX model ({exc})") from None
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim)
        return TensorSpec(value.name, tensor_dtype_to_np_dtype(tensor.elem_type).name, shape)

    source = spec(_one(inputs, "input", path))
    output = spec(_one(list(model.graph.output), "output", path))
    batch = source.shape[0] if source.shape else -1
    external = [_external_file(path, entry.value) for init in model.graph.initializer
                for entry in init.external_data if entry.key == "location"]
    return ArtifactIO(path, "onnxruntime", (path, *sorted(set(external))), source, output,
                      None if batch < 1 else (batch, batch), None, _card_or_none(path))


def _external_file(model: Path, location: str) -> Path:
    """An external-data file the ONNX model names, refused unless it is a plain file inside the model's folder
    (`weights/w.bin` is fine; a symlink could copy any file of the machine into a repository)."""
    relative = Path(location)
    if relative.is_absolute() or ".." in relative.parts or not location.strip():
        raise UsageError(f"{model}: its external-data location {location!r} is not a path inside the model's "
                         "folder; the onnx library and every runtime refuse it")
    file = model.parent / relative
    for step in [*reversed(relative.parents[:-1]), relative]:
        if (model.parent / step).is_symlink():
            raise UsageError(f"{model.parent / step}: a symbolic link in the external data of {model.name}; "
                             "copy the file itself beside the model (a link may point anywhere)")
    if not file.is_file():
        raise UsageError(f"{file}: missing; the ONNX model {model.name} keeps weights in this external-data file")
    return file


def _openvino_io(path: Path) -> ArtifactIO:
    from engines.openvino_engine import shared_core  # raises one clear error when OpenVINO is not installed

    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise UsageError(f"{path}: its weights file {weights.name} is missing beside it")
    try:
        model = shared_core().read_model(str(path))  # one Core per process (see shared_core)
    except Exception as exc:  # OpenVINO raises RuntimeError for an IR it cannot read
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: not a readable OpenVINO IR ({reason})") from None

    def spec(port: Any) -> TensorSpec:
        shape = tuple(dim.get_length() if dim.is_static else -1 for dim in port.get_partial_shape())
        kind = port.get_element_type().get_type_name()
        return TensorSpec(port.get_any_name(), _OPENVINO_TYPES.get(kind, kind), shape)

    source = spec(_one(list(model.inputs), "input", path))
    output = spec(_one(list(model.outputs), "output", path))
    batch = source.shape[0] if source.shape else -1
    return ArtifactIO(path, "openvino", (path, weights), source, output, None if batch < 1 else (batch, batch),
                      None, _card_or_none(path))


def _tensorrt_io(path: Path) -> ArtifactIO:
    manifest = read_manifest(path)
    if not manifest:
        raise UsageError(f"{path}: no manifest {manifest_path(path).name} beside it: the plan's inputs, batch "
                         "profile and GPU cannot be known without it (build it with `resnet-deploy build-engine`)")
    try:
        def spec(entry: dict[str, Any]) -> TensorSpec:
            return TensorSpec(str(entry["name"]), _TENSORRT_TYPES.get(str(entry["dtype"]), str(entry["dtype"])),
                              tuple(int(d) for d in entry["shape"]))

        source, output = spec(manifest["input"]), spec(manifest["output"])
        profile = manifest.get("batch_profile") or {}
        batch_range = (int(profile["min"]), int(profile["max"])) if profile else (source.shape[0], source.shape[0])
        capability = str(manifest["gpu"]["compute_capability"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{manifest_path(path)}: incomplete TensorRT manifest ({exc!r} missing or malformed)") \
            from None
    return ArtifactIO(path, "tensorrt", (path,), source, output, batch_range, capability, _card_or_none(path))
