"""A Triton Inference Server model repository from resnet-deploy artifacts.

For every artifact: `<name>/config.pbtxt` and `<name>/<version>/model.{onnx,plan,xml+bin}` for Triton's ONNX
Runtime (`onnxruntime_onnx`), TensorRT (`tensorrt_plan`) or OpenVINO (`backend: "openvino"`) backend, with names,
types and shapes read from the artifact (`model_io.py`), dynamic batching within what the artifact accepts, an
instance group, a warm-up request, and `labels.txt` from the model card. With a card and an FP32 input, also an
ensemble `<name>_jpeg` (encoded image bytes → class scores) whose Python-backend step applies the card's
evaluation transform (`triton_preprocess.py`, numpy + Pillow). With `backend="python"`, every classifier is a
Python-backend model that runs the artifact through resnet-deploy's own engine (`triton_engine_model.py`), for a
server without the native backend (the `nvidia-pytriton` wheel's server, which `resnet-deploy serve` starts).

Every config is built as Triton's own protobuf (`tritonclient`'s `model_config_pb2`), printed as text, parsed back
with the schema, and checked against the artifact before anything is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_deploy import registry
from resnet_deploy.artifacts import manifest_path
from resnet_deploy.errors import BackendUnavailable, UsageError
from resnet_deploy.serving.model_io import ArtifactIO
from resnet_deploy.serving.triton_files import ModelEntry, refuse_replacing_inputs, write_model

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int8": "TYPE_INT8",
                "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}
MODEL_FILES = {b.name: b.triton.model_file for b in registry.backends() if b.triton}  # registry/backends.py
DEFAULT_MAX_BATCH = 32  # for artifacts that accept any batch
PREPROCESS_SOURCE = Path(__file__).with_name("triton_preprocess.py")
ENGINE_MODEL_SOURCE = Path(__file__).with_name("triton_engine_model.py")
EXTRA = "pip install 'resnet-deploy[triton]'"
BACKENDS = ("native", "python")
# The Triton container release that first carried each TensorRT minor version (NVIDIA's Triton release notes): a
# plan loads only in a server built with the TensorRT version that built it (unless it is version-compatible).
TRITON_FOR_TENSORRT = {"10.0": "24.05", "10.1": "24.06", "10.2": "24.07", "10.3": "24.08", "10.4": "24.09",
                       "10.5": "24.10", "10.6": "24.11", "10.7": "24.12", "10.8": "25.01", "10.9": "25.03"}
SUPPORT_MATRIX = "https://docs.nvidia.com/deeplearning/frameworks/support-matrix/"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class RepositoryOptions:
    name: str | None = None  # only with one artifact
    version: int = 1
    instances: int = 1
    max_batch: int | None = None  # default: the artifact's largest, or 32 for any-batch artifacts
    max_queue_delay_us: int = 100
    gpu: bool = False  # ONNX models: GPU instances (plans always run on a GPU, OpenVINO on the CPU)
    ensemble: bool = True
    force: bool = False  # replace models of the same name already in the repository
    backend: str = "native"  # native: Triton's own backend for the artifact; python: resnet-deploy's engine
    threads: int | None = None  # python backend: the engine's CPU threads per instance
    source: str | None = None  # python backend: the folder the server imports resnet_deploy from (`serve`, tests)


@dataclass
class RepositoryReport:
    repository: Path
    models: list[dict[str, Any]]
    notes: list[str]

    serve: str = ""  # how to start a server on it

    def to_dict(self) -> dict[str, Any]:
        return {"repository": str(self.repository), "models": self.models, "notes": self.notes, "serve": self.serve}


def _schema() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise BackendUnavailable(f"Triton's model-config schema comes with tritonclient: {EXTRA}") from None
    return model_config_pb2


def model_name_for(path: Path) -> str:
    """resnet20.int8.cpu.onnx → resnet20_int8_cpu: Triton names are folder names; keep them plain."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "model"


def check_model_name(name: str) -> str:
    """A model name is one plain folder name of the repository: `.`, `..`, a path or a hidden name is refused."""
    if name in (".", "..") or not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"--name {name!r}: a model name is one folder name inside the repository (letters, "
                         "digits, _, - and ., not starting with a dot)")
    return name


def tensorrt_server(io: ArtifactIO) -> tuple[str, list[str], str]:
    """(the image tag, tritonserver's extra options, a note) for a TensorRT plan, from its manifest."""
    version = io.tensorrt_version
    options = ["--backend-config=tensorrt,version-compatible=true"] if io.version_compatible else []
    if not version:
        return "<yy.mm>", options, (f"{io.path.name}: its manifest does not say which TensorRT built it; serve it "
                                     "on the Triton release built with that TensorRT")
    minor = ".".join(version.split(".")[:2])
    release = TRITON_FOR_TENSORRT.get(minor)
    where = (f"Triton {release} (nvcr.io/nvidia/tritonserver:{release}-py3) is the first release carrying TensorRT "
             f"{minor}; a later one carries a later TensorRT" if release else
             f"serve it on a Triton release built with TensorRT {minor} ({SUPPORT_MATRIX} lists them)")
    if io.version_compatible:
        note = (f"{io.path.name}: a version-compatible plan built with TensorRT {version}: a Triton with TensorRT "
                f"{minor} or later loads it when started with {options[0]}")
    else:
        note = f"{io.path.name}: built with TensorRT {version}, which alone can load it: {where}"
    return release or "<yy.mm>", options, note


def _max_batch(io: ArtifactIO, asked: int | None) -> int:
    """Triton's max_batch_size: 0 (no batching; dims include the batch) for a static-batch artifact."""
    if io.static_batch is not None:
        if asked not in (None, 0, io.static_batch):
            raise UsageError(f"{io.path}: the model has a static batch of {io.static_batch}; --max-batch {asked} "
                             "cannot be served (export it with a dynamic batch)")
        return 0
    if asked is not None and asked < 1:
        raise UsageError(f"--max-batch must be positive, got {asked}")
    if io.batch_range is None:
        return asked or DEFAULT_MAX_BATCH
    low, high = io.batch_range
    if low > 1:
        raise UsageError(f"{io.path}: its batch profile starts at {low}; Triton's dynamic batcher sends batches from "
                         "1 up, so rebuild it with --min-batch 1")
    if asked is not None and asked > high:
        raise UsageError(f"{io.path}: --max-batch {asked} is beyond the plan's profile (max {high}); rebuild with "
                         f"--max-batch {asked} or ask for at most {high}")
    return asked or high


def _preferred_batches(max_batch: int) -> list[int]:
    sizes = [size for size in (4, 8, 16, 32, 64, 128) if size <= max_batch]
    return sizes[-3:] or [max_batch]


def _triton_type(dtype: str, where: str) -> str:
    if dtype not in TRITON_TYPES:
        raise UsageError(f"{where}: element type {dtype} has no Triton data type")
    return TRITON_TYPES[dtype]


def _labels(io: ArtifactIO) -> str:
    """labels.txt: one line per class, so a name may not hold a line break (Triton would shift every label)."""
    assert io.card is not None
    for index, label in enumerate(io.card.class_names):
        if any(char in label for char in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            raise UsageError(f"{io.path}: class {index} ({label!r}) contains a line break; labels.txt holds one name "
                             "a line, so Triton would shift every label after it: rename the class in the card")
    return "".join(f"{label}\n" for label in io.card.class_names)


def _warmup_dims(io: ArtifactIO, dims: list[int], batching: bool) -> list[int] | None:
    """The warm-up request's dims: no -1 (Triton refuses a model whose warm-up does), the batch of an unbatched
    config 1, a free height/width the card's input size; None where nothing says what to send."""
    size = io.card.preprocessing.input_size if io.card is not None else None
    filled = []
    for index, dim in enumerate(dims):
        if dim >= 0:
            filled.append(dim)
        elif index == 0 and not batching:
            filled.append(1)
        elif size is not None and index >= len(dims) - 2:
            filled.append(size)
        else:
            return None
    return filled


def classifier_entry(io: ArtifactIO, name: str, options: RepositoryOptions) -> tuple[ModelEntry, list[str]]:
    schema = _schema()
    notes: list[str] = []
    config = schema.ModelConfig(name=name)
    python = options.backend == "python"
    version = str(options.version)
    files: dict[str, Path] = {}
    if python:
        config.backend = "python"
        config.parameters["artifact"].string_value = io.relative(io.path)
        if options.threads:
            config.parameters["threads"].string_value = str(options.threads)
        if options.source:
            config.parameters["resnet_deploy_source"].string_value = options.source
        files[f"{version}/model.py"] = ENGINE_MODEL_SOURCE
        for file in io.files:
            files[f"{version}/{io.relative(file)}"] = file
        sidecar = manifest_path(io.path)
        if sidecar.is_file():  # the engine checks the hashes it records, and reads the card from it
            files[f"{version}/{io.relative(sidecar)}"] = sidecar
    else:
        form = registry.backend(io.backend).triton
        if form is None:
            raise UsageError(f"{io.path}: no Triton backend reads a {registry.backend(io.backend).display} "
                             f"{'card' if io.backend == 'torch' else 'artifact'}; use --backend python")
        model_file, config.platform, config.backend = form.model_file, form.platform or "", form.backend or ""
        if io.backend == "tensorrt":  # a plan loads on the GPU generation it was built for only
            config.cc_model_filenames[io.compute_capability] = model_file
            notes.append(tensorrt_server(io)[2])
        config.default_model_filename = model_file
        files[f"{version}/{model_file}"] = io.path
        if io.backend == "openvino":
            files[f"{version}/model.bin"] = io.files[1]
        for extra in io.files[1:] if io.backend == "onnxruntime" else ():
            files[f"{version}/{io.relative(extra)}"] = extra  # ONNX external data keeps the path the graph names
    if io.backend == "openvino" and not python:
        # The OpenVINO backend fixes the model's batch to max_batch_size and refuses every other batch (without
        # ENABLE_BATCH_PADDING): serve the IR's own dynamic batch unbatched, as its maintainers advise.
        if options.max_batch not in (None, 0):
            notes.append(f"{name}: --max-batch {options.max_batch} not used: Triton's OpenVINO backend serves the IR "
                         "unbatched (max_batch_size 0, the IR's dynamic batch in the dims); --backend python batches")
        max_batch = 0
    else:
        max_batch = _max_batch(io, options.max_batch)
    config.max_batch_size = max_batch
    skip = 1 if max_batch > 0 else 0
    config.input.add(name=io.input.name, data_type=_triton_type(io.input.dtype, str(io.path)),
                     dims=list(io.input.shape[skip:]))
    output = config.output.add(name=io.output.name, data_type=_triton_type(io.output.dtype, str(io.path)),
                               dims=list(io.output.shape[skip:]))
    texts: dict[str, str] = {}
    if io.card is not None:
        output.label_filename = "labels.txt"
        texts["labels.txt"] = _labels(io)
    if max_batch > 0:
        config.dynamic_batching.preferred_batch_size.extend(_preferred_batches(max_batch))
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    spec = registry.backend(io.backend)  # on a GPU: always (TensorRT), or when asked and it can (ONNX Runtime)
    gpu = not python and spec.triton is not None and (spec.triton.gpu or (options.gpu and "cuda" in spec.devices))
    kind = schema.ModelInstanceGroup.KIND_GPU if gpu else schema.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=options.instances, kind=kind)
    dims = _warmup_dims(io, list(config.input[0].dims), max_batch > 0)
    if dims is None:
        notes.append(f"{name}: no warm-up request (the input's free dims {list(config.input[0].dims)} have no size "
                     "to send, and no model card says one)")
    else:
        warmup = config.model_warmup.add(name="random_batch_1", batch_size=1)
        warmup.inputs[io.input.name].CopyFrom(schema.ModelWarmup.Input(
            data_type=config.input[0].data_type, dims=dims, random_data=True))
    return ModelEntry(name, config, files, texts), notes


def ensemble_entries(io: ArtifactIO, classifier: ModelEntry, options: RepositoryOptions) -> tuple[list[ModelEntry],
                                                                                                  str | None]:
    """The `<name>_preprocess` Python model and the `<name>_jpeg` ensemble; or why there are none."""
    from resnet_deploy.serving.triton_preprocess import FILTERS

    if io.card is None:
        return [], f"{classifier.name}: no model card, so no preprocessing is known: no JPEG ensemble"
    batch = classifier.config.max_batch_size
    dims = list(classifier.config.input[0].dims)
    if batch == 0 and (not dims or dims[0] != -1):
        return [], f"{classifier.name}: static batch, no JPEG ensemble (the ensemble sends any number of images)"
    if io.input.dtype != "float32":
        return [], f"{classifier.name}: input is {io.input.dtype}, the preprocessing makes float32: no JPEG ensemble"
    if io.card.preprocessing.interpolation not in FILTERS:
        return [], (f"{classifier.name}: the card's {io.card.preprocessing.interpolation} resize has no server-side "
                    "implementation: no JPEG ensemble")
    schema = _schema()
    image_dims = [1] if batch > 0 else [-1]  # an unbatched classifier (OpenVINO): the batch is the first dim
    in_name, out_name = io.input.name, io.output.name
    pre = schema.ModelConfig(name=f"{classifier.name}_preprocess", backend="python", max_batch_size=batch)
    pre.input.add(name="IMAGE", data_type="TYPE_STRING", dims=image_dims)
    pre.output.add(name=in_name, data_type="TYPE_FP32", dims=dims)
    pre.parameters["preprocessing"].string_value = json.dumps(io.card.preprocessing.to_dict())
    pre.instance_group.add(count=options.instances, kind=schema.ModelInstanceGroup.KIND_CPU)
    version = str(options.version)

    ensemble = schema.ModelConfig(name=f"{classifier.name}_jpeg", platform="ensemble", max_batch_size=batch)
    ensemble.input.add(name="IMAGE", data_type="TYPE_STRING", dims=image_dims)
    ensemble.output.add(name=out_name, data_type=classifier.config.output[0].data_type,
                        dims=list(classifier.config.output[0].dims), label_filename="labels.txt")
    step = ensemble.ensemble_scheduling.step.add(model_name=pre.name, model_version=-1)
    step.input_map["IMAGE"] = "IMAGE"
    step.output_map[in_name] = "preprocessed_image"
    step = ensemble.ensemble_scheduling.step.add(model_name=classifier.name, model_version=-1)
    step.input_map[in_name] = "preprocessed_image"
    step.output_map[out_name] = out_name
    labels = classifier.texts["labels.txt"]
    return [ModelEntry(pre.name, pre, {f"{version}/model.py": PREPROCESS_SOURCE}),
            ModelEntry(ensemble.name, ensemble, texts={f"{version}/.keep": "", "labels.txt": labels})], None


def config_text(config: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def check_config(text: str, io: ArtifactIO) -> Any:
    """Parse a classifier's config.pbtxt with Triton's schema and hold it against the artifact; returns the parsed
    config. Refuses what Triton would refuse at load time, naming every problem."""
    from google.protobuf import text_format

    schema = _schema()
    try:
        config = text_format.Parse(text, schema.ModelConfig())
    except text_format.ParseError as exc:
        raise UsageError(f"config.pbtxt does not parse with Triton's schema: {exc}") from None
    problems = []
    batching = config.max_batch_size > 0
    skip = 1 if batching else 0
    for label, declared, actual in (("input", config.input, io.input), ("output", config.output, io.output)):
        if len(declared) != 1:
            problems.append(f"{len(declared)} {label}s declared, the model has 1")
            continue
        if declared[0].name != actual.name:
            problems.append(f"{label} is named {declared[0].name!r} in the config but {actual.name!r} in the model")
        if list(declared[0].dims) != list(actual.shape[skip:]):
            problems.append(f"{label} dims {list(declared[0].dims)} do not match the model's "
                            f"{list(actual.shape[skip:])}")
    if batching and io.static_batch is not None:
        problems.append(f"max_batch_size {config.max_batch_size} on a model with a static batch of {io.static_batch}")
    if batching and io.batch_range is not None and config.max_batch_size > io.batch_range[1]:
        problems.append(f"max_batch_size {config.max_batch_size} is beyond the plan's profile (max "
                        f"{io.batch_range[1]})")
    if config.backend == "openvino" and batching:
        problems.append(f"max_batch_size {config.max_batch_size} with the OpenVINO backend, which then refuses "
                        "every batch but that one: use 0 and the IR's dynamic batch in the dims")
    for warmup in config.model_warmup:
        if warmup.batch_size != 1:
            problems.append(f"warm-up {warmup.name!r} has batch_size {warmup.batch_size} (must be 1; Triton "
                            "skips or refuses it otherwise)")
        for tensor, spec in warmup.inputs.items():
            if any(dim < 0 for dim in spec.dims):
                problems.append(f"warm-up {warmup.name!r} input {tensor} has a free dim in {list(spec.dims)}")
    if config.platform == "tensorrt_plan" and dict(config.cc_model_filenames) != {
            io.compute_capability: MODEL_FILES["tensorrt"]}:
        problems.append(f"cc_model_filenames {dict(config.cc_model_filenames)} does not map the plan's compute "
                        f"capability {io.compute_capability} to model.plan")
    if problems:
        raise UsageError(f"{io.path}: Triton would refuse this config: " + "; ".join(problems))
    return config


def _checked_text(entry: ModelEntry, io: ArtifactIO | None) -> str:
    from google.protobuf import text_format

    text = config_text(entry.config)
    if io is not None:
        check_config(text, io)
    else:  # the generated helpers (preprocess, ensemble): parse with the schema all the same
        text_format.Parse(text, _schema().ModelConfig())
    return text


def write_repository(artifacts: list[ArtifactIO], output: Path, options: RepositoryOptions) -> RepositoryReport:
    """Build every model, check every config, then write each model folder (staged, then renamed into place)."""
    if options.name is not None and len(artifacts) > 1:
        raise UsageError("--name names one model; give one artifact, or let the names come from the file names")
    if options.name is not None:
        check_model_name(options.name)
    if options.backend not in BACKENDS:
        raise UsageError(f"--backend {options.backend!r}: one of {', '.join(BACKENDS)}")
    if options.version < 1 or options.instances < 1 or options.max_queue_delay_us < 0:
        raise UsageError("--version and --instances must be positive, --max-queue-delay-us not negative")
    entries: list[tuple[ModelEntry, ArtifactIO | None]] = []
    notes: list[str] = []
    for io in artifacts:
        name = options.name or model_name_for(io.path)
        classifier, classifier_notes = classifier_entry(io, name, options)
        entries.append((classifier, io))
        notes.extend(classifier_notes)
        if options.ensemble:
            extra, why = ensemble_entries(io, classifier, options)
            entries.extend((entry, None) for entry in extra)
            if why:
                notes.append(why)
    names = [entry.name for entry, _ in entries]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise UsageError(f"two artifacts would become the same model {', '.join(duplicated)}; rename one")
    existing = [n for n in names if (output / n).exists()]
    if existing and not options.force:
        raise UsageError(f"{output}: already holds {', '.join(existing)}; pass --force to replace them")
    refuse_replacing_inputs(artifacts, [output / n for n in existing])
    if any(entry.config.backend == "python" and entry.name.endswith("_preprocess") for entry, _ in entries):
        notes.append("the *_preprocess models decode images with Pillow: the stock tritonserver image's Python has "
                     "numpy but no Pillow; serve from an image built FROM it with `RUN pip install pillow`")
    texts = [_checked_text(entry, io) for entry, io in entries]
    output.mkdir(parents=True, exist_ok=True)
    for (entry, _), text in zip(entries, texts, strict=True):
        write_model(output, entry, text)
    return RepositoryReport(output, [entry.summary() for entry, _ in entries], notes,
                            serve_command(output, [entry for entry, _ in entries], artifacts, options))


def serve_command(repository: Path, entries: list[ModelEntry], artifacts: list[ArtifactIO],
                  options: RepositoryOptions) -> str:
    """How to start Triton on this repository: `--gpus all` only where a model runs on a GPU, the image tag and
    options a TensorRT plan needs."""
    if options.backend == "python":
        return (f"resnet-deploy serve {' '.join(str(io.path) for io in artifacts)}  (the Python-backend models run "
                "resnet-deploy's engine: the server's Python must import resnet_deploy)")
    gpu = any(group.kind == _schema().ModelInstanceGroup.KIND_GPU for entry in entries
              for group in entry.config.instance_group)
    tag, extra = "<yy.mm>", []
    for io in artifacts:
        if io.backend == "tensorrt":
            tag, extra = tensorrt_server(io)[:2]
    flags = " ".join(extra)
    return (f"docker run {'--gpus all ' if gpu else ''}--rm -p8000:8000 -p8001:8001 -p8002:8002 "
            f"-v {repository.resolve()}:/models nvcr.io/nvidia/tritonserver:{tag}-py3 tritonserver "
            f"--model-repository=/models{' ' + flags if flags else ''}")
