"""INT8 calibration: which images, through which transform, and the activation ranges they give.

Calibration images are decoded and passed through the model card's evaluation transform
(`data.eval_transform(card.preprocessing)`), exactly what the deployed model will see. By default
512 images are drawn evenly across classes (class subfolders, when there are any) with a fixed seed,
plus a held-out slice of other images from the same folder on which the result is checked (and, for
`--calib-method auto`, on which the methods are compared). Any folder of images will do: labels are
not needed.

Ranges come from ONNX Runtime's own calibrators (`onnxruntime.quantization.calibrate`), run batch
by batch so memory stays flat (ORT's histogram calibrators otherwise keep every intermediate tensor
of every image until the end) and a progress callback can tick. The histogram resolution is ours:
ORT's entropy default (128 bins, 128 quantized bins) has a single candidate threshold, the full
range, so it is min-max in disguise; here the KL search runs over 2048 bins (TensorRT's entropy
calibrator's resolution) against 256 quantized bins (the 255 levels of symmetric int8). ORT's search
loops over bins in Python, which makes that resolution take minutes; `entropy_threshold` is the same
computation written with numpy slices (a test checks it gives ORT's thresholds exactly).

The result is cached as JSON in the user's cache folder (`cache_folder()`), in a file named by the
sha256 of its key: the source ONNX, the content of the calibration images, the preprocessing, the
method and its settings, the sample count, the seed and the ONNX Runtime version. Builds of the same
model on the same images for any target find the same file; a file whose content does not match its
key is never used (it is recomputed and overwritten).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.atomic import write_text
from resnet_deploy.card import Preprocessing
from resnet_deploy.data import calibration_folder  # noqa: F401 - also imported from here
from resnet_deploy.errors import UsageError
from resnet_deploy.samples import batches_of  # noqa: F401 - also imported from here

METHODS = ("entropy", "minmax", "percentile")
# Percentile (99.999th of |x|) by default: it kept top-1 within 0.3 point on a CIFAR-10 ResNet-20 and
# the digits ResNet-20 of the tests, where entropy's KL search clipped option-A ResNets' residual
# activations hard (1.4 points lost on CIFAR-10). `auto` compares all three on held-out images.
DEFAULT_METHOD = "percentile"
CACHE_FORMAT = "resnet_deploy.calibration/1"
DEFAULT_SAMPLES = 512
# Held-out images the INT8 check judges (top-1 agreement, and top-1 against labels where the folder has them):
# 1,000 put the 95 % interval of a 98 % agreement at about ±0.9 points (256 gave ±1.8; one image was 0.4).
DEFAULT_CHECK_SAMPLES = 1000
# Per-method calibrator settings (also part of the cache key). All symmetric: zero point 0.
CALIBRATOR_SETTINGS: dict[str, dict[str, Any]] = {
    "entropy": {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 256},
    "minmax": {"symmetric": True},
    "percentile": {"symmetric": True, "num_bins": 2048, "percentile": 99.999},
}

# progress(phase, done, total): phase is e.g. "calibrate entropy" or "check minmax".
ProgressFn = Callable[[str, int, int], None]


@dataclass
class CalibrationImages:
    """Preprocessed calibration images (NCHW float32) and the held-out images that check the result."""

    source: str  # the folder, or "random"
    images: np.ndarray
    names: list[str]
    sha256: str  # content of the calibration images, their order and the preprocessing
    check_images: np.ndarray
    check_held_out: bool  # False when the folder had no images left over: the check reuses calibration images
    seed: int
    random: bool = False
    # The check images' labels as indices of the card's classes, when the folder's class subfolders are the
    # card's classes (an ImageFolder split of the training data); None otherwise. They let the build judge top-1.
    check_labels: np.ndarray | None = None

    def describe(self) -> str:
        if self.random:
            return f"{len(self.images)} random images (seed {self.seed}; for latency work only)"
        held = "held-out" if self.check_held_out else "calibration (no images left to hold out)"
        return (f"{len(self.images)} images from {self.source} (seed {self.seed}), "
                f"check on {len(self.check_images)} {held}")


@dataclass
class CacheStatus:
    path: Path
    status: str  # "hit", "miss" (no cache) or "stale" (key changed: recomputed)

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "status": self.status}


def load_calibration_images(
    folder: str | Path,
    pre: Preprocessing,
    *,
    samples: int = DEFAULT_SAMPLES,
    check_samples: int = DEFAULT_CHECK_SAMPLES,
    seed: int = 0,
    progress: ProgressFn | None = None,
    class_names: Sequence[str] | None = None,
) -> CalibrationImages:
    """Decode `samples` images from `folder` (any images, class subfolders optional) through the eval transform.

    With `class_names` (the card's), check images get labels when the folder's class subfolders are those
    classes."""
    from resnet_deploy.data import (
        BadImageError,
        eval_transform,
        labels_as_card_classes,
        open_image_folder_unlabelled,
        stratified_indices,
    )

    if samples < 1:
        raise UsageError(f"--calib-samples must be positive, got {samples}")
    root = calibration_folder(folder)
    try:
        dataset = open_image_folder_unlabelled(root)
    except PermissionError as exc:
        raise UsageError(f"{root}: calibration folder is unreadable ({exc.strerror or exc})") from None
    except UsageError as exc:
        raise UsageError(f"calibration needs images: {exc} (any folder of images, with or without class "
                         "subfolders; labels are not needed)") from None
    chosen = stratified_indices(dataset.labels, samples, seed)
    rest = sorted(set(range(len(dataset))) - set(chosen))
    if rest:
        picked = stratified_indices([dataset.labels[i] for i in rest], check_samples, seed + 1)
        check = [rest[i] for i in picked]
    else:
        check = chosen[:: max(1, len(chosen) // check_samples)][:check_samples]
    transform = eval_transform(pre)
    digest = hashlib.sha256(json.dumps(pre.to_dict(), sort_keys=True).encode())

    def decode(indices: Sequence[int], phase: str, hashed: bool) -> tuple[np.ndarray, list[str]]:
        arrays, names = [], []
        for n, index in enumerate(indices):
            name = _sample_name(dataset, index)
            try:
                image = dataset.load(index)
            except BadImageError as exc:
                raise UsageError(f"{exc.path}: cannot read this calibration image; fix or remove it") from None
            except OSError as exc:
                raise UsageError(f"{name}: cannot read this calibration image ({exc})") from None
            if hashed:
                digest.update(name.encode() + b"\0" + _sample_bytes(dataset, index))
            arrays.append(transform(image).numpy())
            names.append(name)
            if progress is not None:
                progress(phase, n + 1, len(indices))
        return np.stack(arrays).astype(np.float32, copy=False), names

    images, names = decode(chosen, "read calibration images", True)
    check_images, _ = decode(check, "read check images", False)
    labels = labels_as_card_classes(dataset, [dataset.labels[i] for i in check], class_names)
    return CalibrationImages(source=str(root), images=images, names=names, sha256=digest.hexdigest(),
                             check_images=check_images, check_held_out=bool(rest), seed=seed, check_labels=labels)


def random_calibration_images(
    pre: Preprocessing, *, samples: int = DEFAULT_SAMPLES, check_samples: int = 64, seed: int = 0
) -> CalibrationImages:
    """Random RGB images through the eval transform: ranges fit for latency work, not for accuracy."""
    from PIL import Image

    from resnet_deploy.data import eval_transform

    if samples < 1:
        raise UsageError(f"--calib-samples must be positive, got {samples}")
    transform = eval_transform(pre)
    rng = np.random.default_rng(seed)
    size = pre.resize_size or pre.input_size

    def make(count: int) -> np.ndarray:
        pixels = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
        return np.stack([transform(Image.fromarray(p, mode="RGB")).numpy() for p in pixels]).astype(np.float32)

    images = make(samples)
    key = json.dumps({"random": True, "seed": seed, "samples": samples, "pre": pre.to_dict()}, sort_keys=True)
    return CalibrationImages(source="random", images=images, names=[f"random-{i}" for i in range(samples)],
                             sha256=hashlib.sha256(key.encode()).hexdigest(), check_images=make(check_samples),
                             check_held_out=True, seed=seed, random=True)


def _sample_name(dataset: Any, index: int) -> str:
    sample = dataset.samples[index]
    if dataset.arrays is not None:
        return f"{dataset.root.name}[{int(sample)}]"
    return str(Path(str(sample)).relative_to(dataset.root))


def _sample_bytes(dataset: Any, index: int) -> bytes:
    sample = dataset.samples[index]
    if dataset.arrays is not None:
        return dataset.arrays[int(sample)].tobytes()
    try:
        return Path(str(sample)).read_bytes()
    except OSError as exc:
        raise UsageError(f"{sample}: cannot read this calibration image ({exc.strerror or exc})") from None


# --- cache ------------------------------------------------------------------------------------------


CACHE_ENV = "RESNET_DEPLOY_CACHE_DIR"


def cache_folder() -> Path:
    """Where calibration caches live: $RESNET_DEPLOY_CACHE_DIR, else the platform's user cache folder
    ($XDG_CACHE_HOME or ~/.cache, then resnet-deploy/calibration). Not beside the model: a model in a read-only
    folder calibrates as well, and every build of the same source and images finds the same file."""
    import os

    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "calibration"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "resnet-deploy" / "calibration"


def cache_path_for(key: dict[str, Any], method: str) -> Path:
    """The cache file of exactly this key (source hash, calibration set hash, method, settings, versions): builds of
    one model for ONNX Runtime, OpenVINO and TensorRT share it, whatever their outputs are called."""
    return cache_folder() / f"{method}-{_key_digest(key)[:32]}.json"


def cache_key(*, source_sha256: str, images: CalibrationImages, method: str, samples: int) -> dict[str, Any]:
    """Everything the ranges depend on; the sha256 of its JSON is the cache key."""
    import onnxruntime

    return {
        "source_onnx_sha256": source_sha256,
        "calibration_set_sha256": images.sha256,
        "calibration_source": "random" if images.random else "images",
        "method": method,
        "settings": CALIBRATOR_SETTINGS[method],
        "samples": samples,
        "seed": images.seed,
        "onnxruntime": onnxruntime.__version__,
    }


def _key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def read_cache(path: Path, key: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(ranges, "hit") when the cache at `path` was made from exactly `key`; (None, "miss"/"stale") otherwise."""
    if not path.is_file():
        return None, "miss"
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None, "stale"
    if (not isinstance(document, dict) or document.get("format") != CACHE_FORMAT
            or document.get("key_sha256") != _key_digest(key) or not isinstance(document.get("ranges"), dict)):
        return None, "stale"
    return document["ranges"], "hit"


def write_cache(path: Path, key: dict[str, Any], ranges: dict[str, Any]) -> bool:
    """Write the cache; False (nothing written, the build goes on) where the cache folder is not writable."""
    document = {"format": CACHE_FORMAT, "key_sha256": _key_digest(key), "key": key, "ranges": ranges}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(document, sort_keys=True) + "\n")
    except (OSError, UsageError):
        return False
    return True


# --- running the calibrators ----------------------------------------------------------------------------


def calibration_batch(input_shape: Sequence[Any], input_size: int) -> tuple[int, bool]:
    """(batch, static): the model's static batch, else one that keeps ResNet-50's intermediate tensors modest."""
    first = input_shape[0] if input_shape else None
    if isinstance(first, int) and first > 0:
        return first, True
    return (16 if input_size <= 64 else 4), False


def compute_ranges(
    model_path: str | Path,
    images: np.ndarray,
    method: str,
    *,
    input_name: str,
    batch: int,
    static: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run ONNX Runtime's `method` calibrator over `images`; return its ranges in calibration-cache form."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ort_method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
                  "percentile": CalibrationMethod.Percentile}[method]
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static calibrates by default
    phase = f"calibrate {method}"
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-calib-") as tmp, _quiet():
        calibrator = create_calibrator(Path(model_path), op_types, augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                       calibrate_method=ort_method, extra_options=dict(CALIBRATOR_SETTINGS[method]))
        batches = batches_of(images, batch, static=static)
        done = 0
        for chunk in batches:
            # One collect_data call per batch: histograms/ranges merge across calls, memory stays flat.
            calibrator.collect_data(_OneBatchReader({input_name: chunk}))
            if method == "entropy":
                calibrator.collector.get_entropy_threshold = entropy_threshold
            done += len(chunk)
            if progress is not None:
                progress(phase, min(done, len(images)), len(images))
        if progress is not None:
            progress(f"thresholds {method}", 0, 1)
        tensors = calibrator.compute_data()
        cache_file = Path(tmp) / "ranges.json"
        save_tensors_data(tensors, cache_file)
        ranges = _ranges_only(json.loads(cache_file.read_text()))
        if progress is not None:
            progress(f"thresholds {method}", 1, 1)
    return ranges


def _ranges_only(document: dict[str, Any]) -> dict[str, Any]:
    """Keep each tensor's range; the histograms (megabytes for a ResNet-50) are not needed to quantize."""
    data = document.get("data", {})
    for name, value in data.items():
        if isinstance(value, dict):
            data[name] = {k: v for k, v in value.items() if k in ("CLS", "lowest", "highest")}
    return document


def entropy_threshold(histogram: tuple[Any, ...], num_quantized_bins: int) -> tuple[Any, Any]:
    """ONNX Runtime's `HistogramCollector.get_entropy_threshold`, computed with numpy slices.

    Same candidates, same reference (p) and candidate (q) distributions, including ORT's integer
    truncation of q and its smoothing, same KL divergence and tie-breaking; only the per-bin Python
    loops are gone.
    """
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, hist_edges = histogram[0], histogram[1]
    num_bins = hist.size
    zero_bin = num_bins // 2
    half = num_quantized_bins // 2
    dtype = hist_edges.dtype
    cumulative = np.concatenate([[0], np.cumsum(hist, dtype=np.int64)])
    candidates = range(half, zero_bin + 1)
    divergences = np.zeros(len(candidates))
    thresholds = []
    for k, i in enumerate(candidates):
        start, end = zero_bin - i, min(zero_bin + i + 1, num_bins)
        thresholds.append((hist_edges[start], hist_edges[end]))
        sliced = hist[start:end].astype(np.int64)
        p = sliced.copy()
        p[0] += cumulative[start]  # outliers fold into the edge bins
        p[-1] += cumulative[-1] - cumulative[end]
        merged = sliced.size // num_quantized_bins
        body = num_quantized_bins * merged
        quantized = sliced[:body].reshape(num_quantized_bins, merged).sum(axis=1)
        quantized[-1] += sliced[body:].sum()
        norm = (p[:body] != 0).reshape(num_quantized_bins, merged).sum(axis=1)
        spread = np.where(norm != 0, quantized / np.maximum(norm, 1), 0.0)
        q = np.zeros(p.size, dtype=np.int64)
        q[:body] = np.repeat(spread, merged).astype(np.int64)  # ORT stores q as int64: truncation
        p_smooth, q_smooth = smooth_distribution(p), smooth_distribution(q)
        if p_smooth is None or q_smooth is None:
            divergences[k] = np.array(np.inf, dtype=dtype)
        else:
            divergences[k] = np.array(entropy(p_smooth, q_smooth), dtype=dtype)
    best = thresholds[int(np.argmin(divergences))]
    low, high = histogram[2], histogram[3]
    if best[0] < low:
        best = (low, best[1])
    if best[1] > high:
        best = (best[0], high)
    return best


def write_ort_cache(ranges: dict[str, Any], path: Path) -> None:
    """Write ranges where `quantize_static(calibration_cache_path=...)` reads them."""
    path.write_text(json.dumps(ranges))


class _OneBatchReader:
    """A CalibrationDataReader holding one feed dict."""

    def __init__(self, feed: dict[str, np.ndarray]) -> None:
        self._feeds = [feed]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return self._feeds.pop() if self._feeds else None

    def __iter__(self):  # noqa: ANN204 - the reader protocol
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self._feeds)


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's calibrators print progress chatter on stdout; stdout is for results only."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
