"""Where a build starts and what it writes: the FP32 source (given, exported, or a card-less ONNX cleaned and
carded from flags), the output's name, and the files a build must not overwrite."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_deploy.artifacts import onnx_stem
from resnet_deploy.errors import UsageError
from resnet_deploy.paths import require_writable_folder

if TYPE_CHECKING:
    from resnet_deploy.builder.request import BuildListener, BuildRequest
    from resnet_deploy.card import ModelCard
    from resnet_deploy.foreign.graph import CleanReport
    from resnet_deploy.targets.base import Target


def default_output(source: Path, tag: str, target: Target, device: str) -> Path:
    """resnet50.onnx → resnet50.int8.cpu.onnx (ONNX Runtime), resnet50.int8.plan, resnet50.int8.xml."""
    return source.with_name(f"{onnx_stem(source)}.{tag}{target.default_suffix(device)}")


def check_output(path: Path, target: Target, source: Path) -> None:
    if path.suffix.lower() not in target.suffixes:
        raise UsageError(f"--output {path}: a {target.name} artifact is named {' or '.join(target.suffixes)}")
    if path.resolve() == source.resolve():
        raise UsageError(f"--output {path} is the source model; choose another name")
    if path.is_dir():
        raise UsageError(f"--output {path} is a folder; give a file name")
    require_writable_folder(path)  # the default output too, before the work starts


def refuse_foreign_file(path: Path, sources: set[str], why: str) -> None:
    """Refuse to overwrite `path` unless it is absent or an earlier build's model of the same source: its
    metadata names one of the `sources` hashes as the ONNX it came from, or (a card-less source, cleaned anew
    each build) as the file its card was made from. A file the user made, or one of another model, is theirs."""
    import json

    from resnet_deploy.artifacts import SOURCE_ONNX_SHA256_KEY, onnx_metadata
    from resnet_deploy.card import CARD_METADATA_KEY

    if not path.exists():
        return
    ours = False
    if path.is_file():
        try:
            meta = onnx_metadata(path)
            lineage = json.loads(meta.get(CARD_METADATA_KEY) or "{}").get("lineage") or {}
            recorded = {meta.get(SOURCE_ONNX_SHA256_KEY), meta.get("source_sha256"), lineage.get("source_sha256")}
            ours = SOURCE_ONNX_SHA256_KEY in meta and bool(recorded & sources)
        except (UsageError, ValueError, AttributeError):  # not an ONNX model of ours at all
            ours = False
    if not ours:
        raise UsageError(f"{path}: {why}, but that file is not an earlier build's model of this source; it would be "
                         "overwritten: move it, or give --output another name or folder")


def foreign_card(request: BuildRequest, say: BuildListener) -> ModelCard | None:
    """The card of a card-less `--onnx` made from `request.card_flags` (None: the model carries its own card).
    Refuses a graph that is no image classifier, or missing flags (naming them), before any work."""
    if request.onnx is None:
        if request.card_flags is not None:
            raise UsageError("--mean/--std/--input-size/--resize-size/--interpolation/--classes describe an ONNX "
                             "without a model card (--onnx); an exported model gets its card from its checkpoint")
        return None
    from resnet_deploy.foreign.card import card_from_flags, has_card
    from resnet_deploy.foreign.graph import load_onnx

    model = load_onnx(request.onnx)
    if has_card(model):
        from resnet_deploy.artifact_checks import metadata_of
        from resnet_deploy.card import CARD_METADATA_KEY, ModelCard

        # a damaged card (not UTF-8, not JSON) is refused here, naming the file
        ModelCard.from_json(metadata_of(model, request.onnx)[CARD_METADATA_KEY], request.onnx)
        if request.card_flags is not None:
            say.warn(f"{request.onnx} carries its model card; the preprocessing flags are ignored")
        return None
    return card_from_flags(model, request.onnx, request.card_flags)


def adopt_foreign(source: Path, card: ModelCard, path: Path, say: BuildListener) -> tuple[Path, CleanReport]:
    """Clean a foreign graph (BatchNorm folded, Identity dropped, constants folded, opset raised; verified
    against the original), give it `card`, and write it to `path`: the FP32 source of the rest of the build."""
    from resnet_deploy.atomic import sha256_file
    from resnet_deploy.foreign.card import attach_card
    from resnet_deploy.foreign.graph import classifier_io, clean_graph, load_onnx, save_onnx

    say.info(f"{source}: no model card; cleaning the graph and carding it from the flags → {path}")
    report = clean_graph(source, path, input_size=card.preprocessing.input_size)
    for line in report.changes:
        say.info(f"  {line}")
    model = load_onnx(path)
    attach_card(model, card, classifier_io(model, path), source_sha256=sha256_file(source))
    save_onnx(model, path)
    return path, report


def card_source(request: BuildRequest, folder: Path) -> Path:
    """The model card a card-compiling target (`Backend.source == "card"`) builds from: --checkpoint as given, else
    the model the FP32 ONNX was exported from (the random model: seed 0) saved as a card in `folder`."""
    from resnet_deploy.card import save_card
    from resnet_deploy.checkpoints import load_model, random_model

    if request.checkpoint is not None and request.arch is None and request.num_classes is None:
        return request.checkpoint
    loaded = (load_model(request.checkpoint, arch=request.arch, num_classes=request.num_classes)
              if request.checkpoint is not None else random_model(str(request.arch), num_classes=request.num_classes))
    return Path(save_card(folder / f"{loaded.card.arch}.safetensors", loaded.model, loaded.card))


def export_source(request: BuildRequest, say: BuildListener) -> tuple[Path, bool]:
    """The FP32 ONNX to start from: `request.onnx`, or a fresh export of the named model (card in its metadata)."""
    if request.onnx is not None:
        return request.onnx, False
    from resnet_deploy.checkpoints import load_model, random_model
    from resnet_deploy.export import default_output_path

    if request.checkpoint is None:
        assert request.arch is not None
        loaded = random_model(request.arch, num_classes=request.num_classes)
        say.warn(f"no --checkpoint: exporting {request.arch} with RANDOM weights (fine for latency work, useless "
                 "for accuracy)")
    else:
        loaded = load_model(request.checkpoint, arch=request.arch, num_classes=request.num_classes)
    folder = request.output.parent if request.output is not None else Path(".")
    return export_model(loaded, folder / default_output_path(loaded.card.arch).name, say, opset=request.opset), True


def export_model(loaded: Any, path: Path, say: BuildListener, *, opset: int | None = None) -> Path:
    """The FP32 ONNX of a loaded model (dynamic batch, verified against PyTorch), card in its metadata."""
    from resnet_deploy.export import export_onnx

    say.info(f"exporting {loaded.card.arch} → {path}")
    return Path(export_onnx(loaded, path, opset=opset).path)
