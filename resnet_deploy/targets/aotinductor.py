"""`build-engine --target aotinductor`: the PyTorch model compiled ahead of time into a `.pt2` package.

PyTorch's own deployment path: `torch.export.export` captures the model's graph, then
`torch._inductor.aoti_compile_and_package` generates C++ (CPU) or Triton (CUDA) kernels for it,
compiles them into a shared library and packs it, with the weights, into one `.pt2` archive.
`torch._inductor.aoti_load_package` runs it without the model's Python code (`AOTInductorEngine`).

Why the source is the model card, not the FP32 ONNX: AOTInductor compiles a PyTorch module, and the
ONNX graph has no way back to one (BatchNorm folded, no module classes). So this target compiles
the card's weights in their own architecture (`--checkpoint CARD`, or `--depth/--arch` with random
weights); an `--onnx` source is refused. The FP32 ONNX the pipeline exports from the same card is
still the reference the artifact is judged against, like every CPU target's.

Precision: fp32, or bf16 (weights cast to bf16 and the input cast inside the graph; logits come
back float32). Device: the kernels are compiled for one device, `cpu` or `cuda` (the CUDA path
compiles with the module and example input on the GPU: Triton kernels, needs a GPU to build),
recorded in the package's own metadata, which also carries the precision, input shape and class
count the engine reads. The batch dimension is dynamic (1 to `MAX_BATCH`).

The package is compiled in a staging folder beside the output, loaded in a fresh loader as the
engine would load it, checked against the eager PyTorch model in FP32 (finite logits; the gate
that judges agreement is the build's, on this CPU: `verify.py`), and only then moved into place,
with the manifest `<artifact>.json` (hashes of the package and of the card it came from) last.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnet_deploy.artifacts import TORCH_SUFFIXES, Manifest, manifest_versions
from resnet_deploy.atomic import sha256_file
from resnet_deploy.errors import BackendUnavailable, CheckFailed, UsageError
from resnet_deploy.targets.base import BuildResult, Target, TargetRequest

if TYPE_CHECKING:
    from resnet_deploy.checkpoints import LoadedModel

# What the backend declaration reads (issue 26): one place for this target's capabilities.
BACKEND = "aotinductor"
DISPLAY_NAME = "PyTorch AOTInductor"
SUFFIX = ".pt2"
PRECISIONS = ("fp32", "bf16")
DEVICES = ("cpu", "cuda")
ENGINE_CLASS = "engines.aotinductor_engine:AOTInductorEngine"
MANIFEST_FORMAT = "resnet-deploy/aotinductor-package"
INSTALL_HINT = ("PyTorch with its Inductor compiler and a C++ compiler (g++ or clang++) on PATH; for --device cuda "
                "also the CUDA toolkit's headers (CUDA_HOME)")
MAX_BATCH = 4096  # the dynamic batch dimension's upper bound
ONNX_REFUSAL = ("AOTInductor compiles the PyTorch model, and an ONNX file has no way back to one: build from the "
                "model card (--checkpoint CARD.safetensors, or --depth/--arch for random weights), not --onnx")


@dataclass
class AOTInductorBuildResult:
    path: Path
    manifest_path: Path
    precision: str
    device: str
    source: Path  # the model card (or "<random arch>")
    source_sha256: str
    export_seconds: float
    compile_seconds: float
    check: dict[str, Any]  # the package against the eager FP32 model, in a fresh loader
    sha256: str
    seconds: float
    notes: list[str] = field(default_factory=list)
    manifest: Manifest | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("manifest")
        for key in ("path", "manifest_path", "source"):
            data[key] = str(data[key])
        return data


def aotinductor_usable(device: str | None = None) -> tuple[bool, str]:
    """Whether a package can be built here (device None) or run on `device`, with the reason either way."""
    try:
        import torch
        import torch._inductor  # noqa: F401  (a PyTorch build without Inductor fails here)
    except ImportError as exc:
        return False, f"PyTorch's Inductor is not importable ({exc}); install {INSTALL_HINT}"
    cuda = device is not None and device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        return False, "CUDA is not available to PyTorch here; use --device cpu"
    try:  # the CUDA path needs it too: the package's wrapper around the Triton kernels is C++
        from torch._inductor.cpp_builder import get_cpp_compiler

        compiler = get_cpp_compiler()
    except Exception as exc:  # Inductor raises its own error when no compiler is found
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return False, f"no C++ compiler for AOTInductor ({first}); install g++ or clang++"
    where = f"CUDA {torch.version.cuda}" if cuda else "CPU"
    return True, f"PyTorch {torch.__version__} ({where}), C++ compiler {compiler}"


def _serving_module(module: Any, precision: str) -> Any:
    """`module` in `precision`, taking float32 images and giving float32 logits (the casts inside the graph)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    class Serving(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module.to(dtype=dtype)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x.to(dtype)).float()

    return Serving().eval()


def compile_package(module: Any, input_shape: tuple[int, int, int], package: Path, *, precision: str,
                    device: str, metadata: dict[str, str]) -> tuple[float, float]:
    """Export `module` (float32, eval) with a dynamic batch and compile it into `package` (a .pt2 path);
    returns (export seconds, compile seconds). `module` is not changed (a copy is cast)."""
    import copy

    import torch

    serving = _serving_module(copy.deepcopy(module).to(device), precision)
    example = torch.zeros((2, *input_shape), dtype=torch.float32, device=device)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    started = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(serving, (example,), dynamic_shapes=({0: batch},))
    exported = time.perf_counter()
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(package),
                                                 inductor_configs={"aot_inductor.metadata": metadata})
    except Exception as exc:  # a compiler failure comes as a long C++ log: the first line and what to check
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise BackendUnavailable(f"AOTInductor could not compile the model ({first}); it needs {INSTALL_HINT}") \
            from None
    return exported - started, time.perf_counter() - exported


def build_aotinductor_package(source: str | Path, output: str | Path, *, precision: str = "fp32",
                              device: str = "cpu", check_images: np.ndarray | None = None,
                              loaded: LoadedModel | None = None) -> AOTInductorBuildResult:
    """Compile the model card `source` (or the already `loaded` model) into the package `output` and write its
    manifest; nothing is written unless the package loads and computes finite logits."""
    import torch

    from engines.aotinductor_engine import META_CPU_ISA, META_DEVICE, AOTInductorEngine
    from resnet_deploy.checkpoints import load_model

    started = time.perf_counter()
    source, output = Path(source), Path(output)
    if precision not in PRECISIONS:
        raise UsageError(f"AOTInductor builds {' or '.join(PRECISIONS)}, not {precision}")
    kind = device.split(":")[0]
    if kind not in DEVICES:
        raise UsageError(f"AOTInductor device must be one of {', '.join(DEVICES)}, got {device!r}")
    if output.suffix.lower() != SUFFIX:
        raise UsageError(f"{output}: an AOTInductor package is named {SUFFIX}")
    if loaded is None:
        if source.suffix.lower() == ".onnx":
            raise UsageError(f"{source}: {ONNX_REFUSAL}")
        if source.suffix.lower() not in TORCH_SUFFIXES:
            raise UsageError(f"{source}: AOTInductor compiles a PyTorch model card ({'/'.join(TORCH_SUFFIXES)})")
        loaded = load_model(source)
    usable, why = aotinductor_usable(device)
    if not usable:
        raise BackendUnavailable(why)
    card = loaded.card
    size = card.preprocessing.input_size
    shape = (3, size, size)
    metadata = {"resnet_deploy.precision": precision, "resnet_deploy.input_shape": "x".join(map(str, shape)),
                "resnet_deploy.num_classes": str(card.num_classes), "resnet_deploy.arch": card.arch,
                "resnet_deploy.torch": torch.__version__}

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        staged = staging / output.name
        export_s, compile_s = compile_package(loaded.model, shape, staged, precision=precision, device=device,
                                              metadata=metadata)
        with AOTInductorEngine(staged, device=device) as engine:  # a fresh loader, as validate and bench open it
            package_meta = dict(engine.metadata)
            check = _check(engine, loaded.model, card, check_images, torch)
        if not check["passed"]:
            raise CheckFailed(f"{output}: the compiled package computes inf/NaN where the PyTorch model does not "
                              f"({check}); nothing was written")
        os.replace(staged, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    notes = _notes(precision, kind)
    seconds = time.perf_counter() - started
    random_weights = bool(card.lineage.get("random_weights"))
    source_sha = loaded.source_sha256 or ""
    manifest = Manifest(
        backend=BACKEND, artifact=output.name, sha256=sha256_file(output), precision=precision,
        # The shared schema names its source `source_onnx`; here it is the PyTorch card the package was compiled
        # from (`kind` says so), the one thing a rebuild needs.
        source_onnx={"path": str(loaded.source), "sha256": source_sha, "precision": "fp32", "kind": "model card",
                     "random_weights": random_weights},
        card=card.to_dict(), artifact_check=check, build_seconds=round(seconds, 3),
        versions=manifest_versions(("torch", torch.__version__)), notes=notes,
        target={"device": device, "compiled_for": package_meta.get(META_DEVICE),
                "cpu_isa": package_meta.get(META_CPU_ISA), "dynamic_batch": [1, MAX_BATCH],
                "export_seconds": round(export_s, 3), "compile_seconds": round(compile_s, 3),
                "package_metadata": package_meta},
    )
    manifest_file = manifest.write(output)
    return AOTInductorBuildResult(
        path=output, manifest_path=manifest_file, precision=precision, device=device, source=loaded.source,
        source_sha256=source_sha, export_seconds=export_s, compile_seconds=compile_s, check=check,
        sha256=manifest.sha256, seconds=seconds, notes=notes, manifest=manifest)


def _check(engine: Any, module: Any, card: Any, images: np.ndarray | None, torch: Any) -> dict[str, Any]:
    """The package against the eager FP32 module on `images` (None: the self-check's smooth random pictures)."""
    from resnet_deploy.compare import compare_logits
    from resnet_deploy.selfcheck import check_inputs

    pre = card.preprocessing
    data = "images" if images is not None else "random"
    if images is None:
        images = check_inputs(pre.input_size, pre.mean, pre.std)
    images = np.ascontiguousarray(images, dtype=np.float32)
    with torch.inference_mode():
        reference = module.float().cpu()(torch.from_numpy(images)).numpy()
    logits = np.concatenate([engine.infer(images[i : i + 32]) for i in range(0, len(images), 32)])
    comparison = compare_logits(reference, logits)
    return {"reference": "eager PyTorch model, FP32, CPU", "data": data, "passed": bool(comparison.finite),
            **comparison.to_dict()}


def _notes(precision: str, device: str) -> list[str]:
    if precision != "bf16" or device != "cpu":
        return []
    from resnet_deploy.precision.isa import this_cpu

    flags = set(this_cpu().flags)
    if not flags & {"avx512_bf16", "amx_bf16", "amx"}:
        return ["this CPU has no native bf16 (AVX512-BF16/AMX): the bf16 package converts to FP32 inside its kernels "
                "and is usually slower than FP32 here; a CPU with bf16 runs it natively"]
    return []


class AOTInductorTarget(Target):
    """A `.pt2` AOTInductor package compiled from the model card, for the CPU or a CUDA GPU."""

    name = BACKEND

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (SUFFIX,)

    def default_suffix(self, device: str = "cpu") -> str:
        return SUFFIX if device == "cpu" else f".{device.split(':')[0]}{SUFFIX}"

    def usable(self, device: str | None = None) -> tuple[bool, str]:
        return aotinductor_usable(device)

    def build(self, request: TargetRequest) -> BuildResult:
        """`request.model` is the model card (the pipeline passes it instead of the ONNX; see the docstring)."""
        result = build_aotinductor_package(request.model, request.output, precision=request.precision,
                                           device=request.device, check_images=request.check_images)
        check = result.check
        row = (f"top-1 agreement {check['agreement']:.2f}% with the eager PyTorch model (FP32), max |Δ logit| "
               f"{check['max_abs_logit_diff']:.4g} ({check['data']}); export {result.export_seconds:.1f} s, "
               f"compile {result.compile_seconds:.1f} s")
        assert result.manifest is not None
        return BuildResult(self.name, result.path, result.manifest_path, result.manifest,
                           summary=[("artifact check", row)], warnings=list(result.notes), details=result.to_dict())
