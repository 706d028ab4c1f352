"""Bad inputs and faults (issue 15), each as the user meets it: one `error:` line, the documented exit
code, the input left intact. docs/RELIABILITY.md lists what these tests promise.

The fixture is a random-weight resnet20 card for two classes at 16x16, its ONNX export and a tiny
two-class ImageFolder of noise PNGs: accuracy is beside the point here, the failure paths are not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy.card import CARD_METADATA_KEY, ModelCard, save_card
from resnet_deploy.errors import UsageError

CLASSES = ["a", "b"]
SIZE = 16
TIMEOUT = 240  # a hang (a FIFO read to its end) fails the test instead of stalling the suite


def run(*args: str, cwd: Path | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "resnet_deploy", *args], capture_output=True, text=True,
                              cwd=cwd, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"`resnet-deploy {' '.join(args)}` hung for {timeout} s")


def assert_usage_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, one `error:` line with every needle, no traceback, no 'a bug'."""
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and "(a bug" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in errors[0], result.stderr


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict[str, Path]:
    """card.safetensors, model.onnx and data/{a,b}/*.png in one folder."""
    from PIL import Image

    from resnet_deploy.checkpoints import load_model
    from resnet_deploy.export import export_onnx

    root = tmp_path_factory.mktemp("kit")
    card = ModelCard.default_for("resnet20", class_names=CLASSES)
    card = dataclasses.replace(card, preprocessing=dataclasses.replace(card.preprocessing, input_size=SIZE,
                                                                       resize_size=None))
    save_card(root / "card.safetensors", card.build_model(), card)
    export_onnx(load_model(root / "card.safetensors"), root / "model.onnx", verify=False)
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / "data" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "data" / name / f"{i}.png")
    return {"root": root, "card": root / "card.safetensors", "onnx": root / "model.onnx", "data": root / "data"}


# --- 1. an output that is one of the inputs --------------------------------------------------------


@pytest.mark.parametrize("case", ["export-symlink", "validate-report-hardlink", "bench-report", "bench-plot-symlink",
                                  "import-weights"])
def test_an_output_that_is_an_input_is_refused_and_the_input_survives(kit, tmp_path, case) -> None:
    card = tmp_path / "card.safetensors"
    onnx = tmp_path / "model.onnx"
    shutil.copy(kit["card"], card)
    shutil.copy(kit["onnx"], onnx)
    (tmp_path / "card-link.safetensors").symlink_to(card)
    os.link(onnx, tmp_path / "model-link.md")
    (tmp_path / "plot.png").symlink_to(onnx)
    before = {p: sha(p) for p in (card, onnx)}
    args = {
        "export-symlink": ["export", "--checkpoint", str(card), "-o", str(tmp_path / "card-link.safetensors")],
        "validate-report-hardlink": ["validate", str(onnx), "--data", str(kit["data"]), "--report",
                                     str(tmp_path / "model-link.md")],
        "bench-report": ["bench", str(onnx), "--iters", "1", "--report", str(onnx)],
        "bench-plot-symlink": ["bench", str(onnx), "--iters", "1", "--plot", str(tmp_path / "plot.png")],
        "import-weights": ["import-weights", str(card), "--arch", "resnet20", "-o", str(card)],  # the path itself
    }[case]
    assert_usage_error(run(*args), "would destroy the input")
    assert {p: sha(p) for p in before} == before


# --- 5. an input that is not a regular file --------------------------------------------------------


@pytest.mark.parametrize("case", ["fifo-checkpoint", "dev-zero-checkpoint", "folder-artifact"])
def test_an_input_that_is_not_a_regular_file_is_refused_without_hanging(kit, tmp_path, case) -> None:
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    args, needle = {
        "fifo-checkpoint": (["export", "--checkpoint", str(fifo), "-o", str(tmp_path / "x.onnx")], "a FIFO"),
        "dev-zero-checkpoint": (["export", "--checkpoint", "/dev/zero", "-o", str(tmp_path / "x.onnx")],
                                "a character device"),
        "folder-artifact": (["validate", str(folder), "--data", str(kit["data"])], "is a folder"),
    }[case]
    assert_usage_error(run(*args, timeout=120), needle)


# --- 2. model cards validated when read and when written ----------------------------------------------


def _write_raw_card(kit: dict[str, Path], path: Path, edit) -> Path:  # noqa: ANN001 - a dict editor
    """A card file whose metadata was edited after the fact (what a hand-edited or foreign file holds)."""
    from safetensors.torch import load_file, save_file

    from resnet_deploy.card import read_card

    data = read_card(kit["card"]).to_dict()
    edit(data)
    save_file(load_file(str(kit["card"])), str(path), metadata={CARD_METADATA_KEY: json.dumps(data), "format": "pt"})
    return path


BAD_CARDS = {
    "negative-std": (lambda d: d["preprocessing"].update(std=[-0.25, 0.25, 0.25]), "std"),
    "zero-std": (lambda d: d["preprocessing"].update(std=[0.0, 0.25, 0.25]), "std"),
    "input-size-0": (lambda d: d["preprocessing"].update(input_size=0), "input_size 0"),
    "input-size-100000": (lambda d: d["preprocessing"].update(input_size=100000), "input_size 100000"),
    "two-value-mean": (lambda d: d["preprocessing"].update(mean=[0.5, 0.5]), "mean"),
    "nan-mean": (lambda d: d["preprocessing"].update(mean=[float("nan"), 0.5, 0.5]), "mean"),
    "unknown-interpolation": (lambda d: d["preprocessing"].update(interpolation="sinc"), "interpolation 'sinc'"),
    "names-for-fewer-classes": (lambda d: d.update(num_classes=10), "2 class names for 10 classes"),
}


@pytest.mark.parametrize("case", sorted(BAD_CARDS))
def test_a_bad_card_is_refused_when_read(kit, tmp_path, case) -> None:
    from resnet_deploy.card import read_card

    edit, needle = BAD_CARDS[case]
    card = _write_raw_card(kit, tmp_path / "bad.safetensors", edit)
    with pytest.raises(UsageError, match="invalid model card") as refused:
        read_card(card)
    assert needle in str(refused.value)


@pytest.mark.parametrize("case", ["negative-std", "input-size-100000"])
def test_a_bad_card_is_one_error_line_in_the_cli(kit, tmp_path, case) -> None:
    """A negative std used to validate with exit 0 and silently wrong accuracy; input size 100000 tried
    to allocate a hundred gigabytes in the decoding workers."""
    edit, needle = BAD_CARDS[case]
    card = _write_raw_card(kit, tmp_path / "bad.safetensors", edit)
    assert_usage_error(run("validate", str(card), "--data", str(kit["data"])), "invalid model card", needle)


def test_a_bad_card_is_never_written(kit, tmp_path) -> None:
    output = tmp_path / "big.safetensors"
    result = run("import-weights", str(kit["card"]), "--arch", "resnet20", "--input-size", "100000",
                 "-o", str(output))
    assert_usage_error(result, "invalid model card", "input_size 100000")
    assert not output.exists()
    card = ModelCard.default_for("resnet20", class_names=CLASSES)
    with pytest.raises(UsageError, match="2 class names for 10 classes"):
        save_card(tmp_path / "c.safetensors", card.build_model(), dataclasses.replace(card, num_classes=10))
    assert not (tmp_path / "c.safetensors").exists()


# --- 3. artifacts checked against their manifest -----------------------------------------------------


@pytest.fixture(scope="module")
def built(kit) -> dict[str, Path]:
    """An ONNX Runtime artifact and, where OpenVINO is installed, an OpenVINO IR, each with its manifest."""
    from resnet_deploy.artifacts import artifact_card
    from resnet_deploy.targets.onnxruntime import build_onnxruntime_artifact

    root = kit["root"] / "built"
    root.mkdir()
    artifacts = {"ort": build_onnxruntime_artifact(kit["onnx"], root / "model.cpu.onnx").path}
    try:
        from resnet_deploy.targets.openvino import build_openvino_ir, openvino_usable
    except ImportError:
        return artifacts
    if openvino_usable()[0]:
        artifacts["openvino"] = build_openvino_ir(kit["onnx"], root / "model.xml",
                                                  card=artifact_card(kit["onnx"])).path
    return artifacts


@pytest.mark.parametrize("case", ["ort-replaced", "xml-replaced", "bin-replaced", "bin-missing"])
def test_an_artifact_file_that_changed_since_its_manifest_is_refused(kit, built, tmp_path, case) -> None:
    kind = "ort" if case.startswith("ort") else "openvino"
    if kind not in built:
        pytest.skip("OpenVINO is not installed here (pip install 'resnet-deploy[openvino]')")
    source = built[kind]
    for file in source.parent.glob(source.stem + "*"):
        shutil.copy(file, tmp_path / file.name)
    artifact = tmp_path / source.name
    changed = {"ort-replaced": artifact, "xml-replaced": artifact, "bin-replaced": artifact.with_suffix(".bin"),
               "bin-missing": artifact.with_suffix(".bin")}[case]
    if case == "ort-replaced":
        shutil.copy(kit["onnx"], changed)  # another model, valid and carrying a card
    elif case == "bin-missing":
        changed.unlink()
    else:
        data = bytearray(changed.read_bytes())
        data[-8] ^= 1  # one flipped bit in a weight (.bin) or in the closing text (.xml)
        changed.write_bytes(bytes(data))
    result = run("validate", str(artifact), "--data", str(kit["data"]), "--workers", "0")
    assert_usage_error(result, str(changed), "missing" if case == "bin-missing" else "changed since its manifest")


# --- 7. an ONNX model whose input disagrees with its card; 8. a missing external-data file --------------


def test_onnx_input_that_disagrees_with_its_card_is_one_error_in_validate_and_build_engine(kit, tmp_path) -> None:
    import onnx

    model = onnx.load(str(kit["onnx"]))
    for prop in model.metadata_props:
        if prop.key == CARD_METADATA_KEY:
            card = json.loads(prop.value)
            card["preprocessing"]["input_size"] = 24
            prop.value = json.dumps(card)
    bad = tmp_path / "model.onnx"
    onnx.save(model, str(bad))
    needle = "but its model card says 3x24x24"
    assert_usage_error(run("validate", str(bad), "--data", str(kit["data"]), "--workers", "0"), needle)
    assert_usage_error(run("build-engine", "--onnx", str(bad), "--target", "onnxruntime",
                           "-o", str(tmp_path / "out.cpu.onnx")), needle)


@pytest.mark.parametrize("command", ["inspect", "validate", "bench", "build-engine"])
def test_a_missing_external_data_file_is_exit_2_everywhere(kit, tmp_path, command) -> None:
    import onnx

    model = onnx.load(str(kit["onnx"]))
    onnx.save_model(model, str(tmp_path / "model.onnx"), save_as_external_data=True, location="weights.data",
                    size_threshold=0)
    (tmp_path / "weights.data").unlink()
    path = str(tmp_path / "model.onnx")
    args = {"inspect": ["inspect", path],
            "validate": ["validate", path, "--data", str(kit["data"]), "--workers", "0"],
            "bench": ["bench", path, "--iters", "1", "--batch-sizes", "1", "--backends", "onnxruntime"],
            "build-engine": ["build-engine", "--onnx", path, "--target", "onnxruntime",
                             "-o", str(tmp_path / "out.cpu.onnx")]}[command]
    assert_usage_error(run(*args), "weights.data: missing")


# --- 4. decompression bombs; 5. one class -------------------------------------------------------------


def _png_bomb(path: Path, side: int) -> None:
    """A valid 1-bit PNG of side x side black pixels: tens of kB on disk, `side`² pixels decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _jpeg_claiming(path: Path, side: int) -> None:
    """A small real JPEG whose frame header claims side x side pixels."""
    from PIL import Image

    Image.new("RGB", (16, 16), (90, 40, 200)).save(path, "JPEG")
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    path.write_bytes(bytes(data))


def test_decompression_bombs_are_bad_images_named_and_skippable(kit, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(kit["data"], data)
    _png_bomb(data / "a" / "bomb.png", 15000)
    _jpeg_claiming(data / "b" / "huge.jpg", 10000)
    result = run("validate", str(kit["onnx"]), "--data", str(data), "--workers", "0")
    assert_usage_error(result, "decompression bomb", "--skip-bad")
    assert "DecompressionBomb" not in result.stderr.replace("decompression bomb", "")
    skipped = run("validate", str(kit["onnx"]), "--data", str(data), "--workers", "0", "--skip-bad", "--json")
    assert skipped.returncode == 0, skipped.stderr
    assert "Traceback" not in skipped.stderr and "DecompressionBombWarning" not in skipped.stderr
    dataset = json.loads(skipped.stdout)["dataset"]
    assert dataset["skipped"] == 2
    assert {Path(f["path"]).name for f in dataset["skipped_files"]} == {"bomb.png", "huge.jpg"}


def test_validate_refuses_a_single_class_data_set(kit, tmp_path) -> None:
    shutil.copytree(kit["data"] / "a", tmp_path / "data" / "a")
    result = run("validate", str(kit["onnx"]), "--data", str(tmp_path / "data"), "--workers", "0")
    assert_usage_error(result, "at least two classes")


# --- 6. disk and permission errors --------------------------------------------------------------------


def test_an_unwritable_output_is_refused_before_the_work(kit, tmp_path) -> None:
    started = time.perf_counter()
    result = run("export", "--checkpoint", str(kit["card"]), "-o", "/proc/self/model.onnx")
    assert_usage_error(result, "/proc/self/model.onnx", "cannot write")
    assert "exporting" not in result.stderr, "the check must come before the export"
    assert time.perf_counter() - started < TIMEOUT


def test_the_runner_turns_an_os_error_into_one_line_and_exit_2(capsys) -> None:
    import errno

    import typer

    from resnet_deploy.cli import run_command

    app = typer.Typer()

    @app.command()
    def write() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/model.onnx")

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_command(typer.main.get_command(app), [], "resnet-deploy")
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: /full/disk/model.onnx: No space left on device (errno 28)"


# --- 8. SIGTERM and SIGINT ------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_write_cleans_up_and_says_interrupted(tmp_path, signum) -> None:
    """Export writes its ONNX to a hidden temporary file, then verifies it; a signal while that file
    exists must remove it, leave no output, and end in `error: interrupted`, exit 130 (as train does)."""
    output = tmp_path / "model.onnx"
    process = subprocess.Popen([sys.executable, "-m", "resnet_deploy", "export", "--arch", "resnet20", "-o",
                                str(output)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + TIMEOUT
    while not list(tmp_path.glob(".model.onnx.*.tmp")):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the export ended or stalled before its temporary file appeared: {process.communicate()}")
        time.sleep(0.02)
    process.send_signal(signum)
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted", err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], "no temporary file and no output may remain"


# --- the guards themselves ------------------------------------------------------------------------------


def test_the_guards_see_links_fifos_and_duplicate_outputs(tmp_path) -> None:
    from resnet_deploy.paths import check_io, same_file

    model = tmp_path / "m.xml"
    model.write_text("<net/>")
    model.with_suffix(".bin").write_bytes(b"weights")
    (tmp_path / "hard.md").hardlink_to(model)
    (tmp_path / "soft.md").symlink_to(model)
    assert same_file(tmp_path / "hard.md", model) and same_file(tmp_path / "soft.md", model)
    assert same_file(tmp_path / "sub" / ".." / "new.md", tmp_path / "new.md")  # neither exists yet
    for output in ("hard.md", "soft.md", "m.bin", "m.xml.json"):
        with pytest.raises(UsageError, match="would destroy the input"):
            check_io(inputs=[model], outputs=[("--report", tmp_path / output)])
    with pytest.raises(UsageError, match="is also --report"):
        check_io(outputs=[("--report", tmp_path / "r.md"), ("--plot", tmp_path / "r.md")])
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UsageError, match="a FIFO"):
        check_io(inputs=[tmp_path / "fifo"])
    check_io(inputs=[model], outputs=[("--report", tmp_path / "new" / "deeper" / "r.md")])  # writers mkdir
    assert not (tmp_path / "new").exists()
