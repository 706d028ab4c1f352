"""The battery of issue 27 (bad inputs and faults the first hardening round missed), each as the user meets
it: one `error:` line, the documented exit code, the input left intact. docs/RELIABILITY.md lists them.

The fixture is test_hardening's `kit`: a random-weight resnet20 card for two classes at 16x16, its ONNX
export and a tiny two-class ImageFolder of noise PNGs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_hardening
from test_hardening import SIZE, assert_usage_error, run, sha

kit = test_hardening.kit  # the same module-scoped fixture


def external_data_copy(source: Path, folder: Path, location: str = "model.data") -> Path:
    """`source` re-saved with its weights in the external-data file `location` beside it."""
    import onnx

    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(source))
    path = folder / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=1024)  # small tensors stay inline: shape inference reads them
    return path


# --- data loss: an output over a file an input consists of, or inside the data set ---------------------------


@pytest.mark.parametrize("command", ["validate", "bench"])
def test_a_report_over_the_models_external_data_is_refused(kit, tmp_path, command) -> None:
    model = external_data_copy(kit["onnx"], tmp_path)
    weights = tmp_path / "model.data"
    before = sha(weights)
    args = ["validate", str(model), "--data", str(kit["data"])] if command == "validate" else \
        ["bench", str(model), "--iters", "1"]
    assert_usage_error(run(*args, "--report", str(weights)), "would destroy the input", "model.data")
    assert sha(weights) == before


def test_a_report_over_an_image_of_the_data_set_is_refused(kit, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(kit["data"], data)
    image = data / "a" / "0.png"
    before = sha(image)
    assert_usage_error(run("validate", str(kit["onnx"]), "--data", str(data), "--report", str(image)),
                       "inside the data set")
    assert sha(image) == before


@pytest.mark.parametrize("case", ["report-over-model", "plot-over-calibration-image", "read-only-report"])
def test_sensitivity_guards_its_outputs_before_the_analysis(kit, tmp_path, case) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(kit["onnx"], model)
    data = tmp_path / "data"
    shutil.copytree(kit["data"], data)
    image = data / "a" / "0.png"
    before = {p: sha(p) for p in (model, image)}
    flag, output, needle = {
        "report-over-model": ("--report", model, "would destroy the input"),
        "plot-over-calibration-image": ("--plot", image, "inside the data set"),
        "read-only-report": ("--report", Path("/proc/self/sensitivity.md"), "/proc/self/sensitivity.md"),
    }[case]
    result = run("sensitivity", str(model), "--calib-data", str(data), "--calib-samples", "2", flag, str(output))
    assert_usage_error(result, needle)
    assert ".tmp" not in result.stderr and "calibrating" not in result.stderr  # refused before any work
    assert {p: sha(p) for p in before} == before


def test_build_engine_keeps_the_users_own_file_where_its_intermediate_would_go(kit, tmp_path) -> None:
    pytest.importorskip("openvino")
    out = tmp_path / "out"
    out.mkdir()
    model = tmp_path / "x.onnx"
    shutil.copy(kit["onnx"], model)
    mine = out / "x.fp16.onnx"
    mine.write_bytes(b"the user's own, different model")
    result = run("build-engine", "--onnx", str(model), "--fp16", "--target", "openvino", "-o", str(out / "x.fp16.xml"))
    assert_usage_error(result, str(mine), "would be overwritten")
    assert mine.read_bytes() == b"the user's own, different model"
    assert not (out / "x.fp16.xml").exists()


def test_train_out_inside_the_data_set_is_refused_before_creating_it(tmp_path) -> None:
    from test_trainer_cli import FAST, make_folder

    data = make_folder(tmp_path / "d")
    result = run("train", "--arch", "resnet20", "--data", str(data), "--out", str(data / "train" / "zz_run"), *FAST,
                 "--iters", "2")
    assert_usage_error(result, "inside the data set")
    assert not (data / "train" / "zz_run").exists()


@pytest.mark.slow  # two full builds per case: a check that the refusal above lets reruns through
@pytest.mark.parametrize("source", ["carded", "card-less"])
def test_build_engine_rebuilds_over_its_own_earlier_intermediate(kit, tmp_path, source) -> None:
    pytest.importorskip("openvino")
    model = tmp_path / "x.onnx"
    if source == "carded":
        shutil.copy(kit["onnx"], model)
        flags: tuple[str, ...] = ()
    else:  # cleaned anew by each build: the intermediate's source hash differs, its original's does not
        constant_loop_classifier(model, 5)
        flags = FOREIGN_FLAGS
    args = ("build-engine", "--onnx", str(model), *flags, "--fp16", "--target", "openvino", "-o",
            str(tmp_path / "x.fp16.xml"))
    for _ in range(2):  # the second run replaces the first run's x.fp16.onnx: an earlier build of the same source
        result = run(*args)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.fp16.onnx").is_file()


# --- silent wrong results -------------------------------------------------------------------------------------


def test_sensitivity_refuses_a_calibration_folder_that_leaves_nothing_held_out(kit, tmp_path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(kit["data"] / "a" / "0.png", one / "0.png")
    result = run("sensitivity", str(kit["onnx"]), "--calib-data", str(one))
    assert_usage_error(result, "1 image(s)", "at least 2", "514 images", "--data")


# --- hangs: long native work stays interruptible --------------------------------------------------------------


def constant_loop_classifier(path: Path, trips: int) -> Path:
    """A card-less classifier ([N,3,16,16] → [N,3]) whose output adds an all-constant Loop of `trips` trips:
    cleaning folds the Loop, i.e. runs it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.ones(3, np.float32), "one")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "v0"], ["v"], body=body),
         helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Add", ["f", "v"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.array(trips, np.int64), "trips"), numpy_helper.from_array(np.array(True), "cond"),
         numpy_helper.from_array(np.zeros(3, np.float32), "v0")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


FOREIGN_FLAGS = ("--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--classes", "a,b,c")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_build_engine_cleaning_an_endless_constant_loop_stops_on_a_signal(tmp_path, signum) -> None:
    model = constant_loop_classifier(tmp_path / "loop.onnx", 2**40)
    command = [sys.executable, "-m", "resnet_deploy", "build-engine", "--onnx", str(model), *FOREIGN_FLAGS,
               "--target", "onnxruntime", "-o", str(tmp_path / "loop.cpu.onnx")]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert process.stderr is not None
        for line in process.stderr:  # wait until the cleaning has begun
            if "cleaning the graph" in line:
                break
        time.sleep(3)  # well inside the Loop by now
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
            pytest.fail("build-engine ignored the signal while cleaning the graph")
    assert process.returncode == 130 and "error: interrupted" in err and "Traceback" not in err, err
    assert not (tmp_path / "loop.cpu.onnx").exists()


@pytest.mark.slow  # a full build: a check that cleaning in a child process still folds the Loop
def test_build_engine_cleans_a_short_constant_loop_as_before(tmp_path) -> None:
    model = constant_loop_classifier(tmp_path / "loop.onnx", 5)
    result = run("build-engine", "--onnx", str(model), *FOREIGN_FLAGS, "--target", "onnxruntime", "-o",
                 str(tmp_path / "loop.cpu.onnx"))
    assert result.returncode == 0, result.stderr
    assert "Loop: 1 → 0" in result.stderr


def test_inspect_of_an_empty_onnx_file_is_an_error(tmp_path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_usage_error(run("inspect", str(empty)), "empty.onnx", "empty file (0 bytes)")


def test_inspect_counts_huge_declared_initializers_without_overflow(kit, tmp_path) -> None:
    import json

    import onnx
    from onnx import TensorProto

    model = onnx.load(str(kit["onnx"]))
    huge = model.graph.initializer.add()
    huge.name, huge.data_type = "huge", TensorProto.FLOAT
    huge.dims.extend([2**40, 2**40])  # declared only: inspect reads shapes, never the data
    path = tmp_path / "huge.onnx"
    onnx.save(model, str(path))
    result = run("inspect", str(path), "--json")
    assert result.returncode == 0, result.stderr
    weights = onnx.load(str(kit["onnx"])).graph.initializer
    expected = 2**80 + sum(int(onnx.numpy_helper.to_array(t).size) for t in weights)
    assert json.loads(result.stdout)["parameters"] == expected


# --- a signal while the process exits -------------------------------------------------------------------------

LATE_SIGNAL_SCRIPT = """
import atexit, time
import typer
from resnet_deploy.runner import run_command

app = typer.Typer()

@app.command()
def work() -> None:
    atexit.register(time.sleep, 4)  # an exit handler still busy, as multiprocessing joining decoding workers
    print("done", flush=True)

run_command(typer.main.get_command(app), [], "resnet-deploy")
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_exit_handlers_is_an_interrupt_without_a_traceback(signum) -> None:
    process = subprocess.Popen([sys.executable, "-c", LATE_SIGNAL_SCRIPT], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "done"  # the command returned; the exit handlers run now
    time.sleep(1)
    process.send_signal(signum)
    out, err = process.communicate(timeout=30)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert process.returncode == 130 and err.strip() == "error: interrupted", err


# --- wrong exit codes: the onnx library's external-data refusals ----------------------------------------------


def bad_external_data(kit: dict[str, Path], root: Path, case: str) -> Path:
    """The kit's model with its weights in external data, then broken the way `case` says."""
    import os

    import onnx

    location = "weights/w.bin" if case == "subfolder" else "w.bin"
    model = external_data_copy(kit["onnx"], root, location=location)
    header = onnx.load(str(model), load_external_data=False)
    for tensor in header.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = {"outside": "../w.bin", "absolute": str((root / "w.bin").resolve()),
                               "symlink": "link.bin"}.get(case, entry.value)
            if entry.key == "length" and case == "past-end":
                entry.value = str(int(entry.value) + 10**9)
    onnx.save(header, str(model))
    if case == "outside":
        shutil.copy(root / "w.bin", root.parent / "w.bin")
    if case == "symlink":
        os.symlink("w.bin", root / "link.bin")
    return model


EXTERNAL_CASES = {"outside": "outside the model's folder", "absolute": "absolute path", "symlink": "symbolic link",
                  "past-end": "claims bytes"}
FOREIGN_CARD = ("--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")


@pytest.mark.parametrize("case", sorted(EXTERNAL_CASES))
def test_external_data_the_onnx_library_refuses_is_a_usage_error(kit, tmp_path, case) -> None:
    model = bad_external_data(kit, tmp_path / "m", case)
    result = run("import-onnx", str(model), "-o", str(tmp_path / "out.onnx"), *FOREIGN_CARD)
    assert_usage_error(result, EXTERNAL_CASES[case])


@pytest.mark.parametrize("command", ["validate", "bench", "build-engine"])
def test_external_data_outside_the_folder_is_a_usage_error_in_every_command(kit, tmp_path, command) -> None:
    model = bad_external_data(kit, tmp_path / "m", "outside")
    args = {"validate": ["validate", str(model), "--data", str(kit["data"])],
            "bench": ["bench", str(model), "--iters", "1", "--batch-sizes", "1"],
            "build-engine": ["build-engine", "--onnx", str(model), "--target", "onnxruntime", "-o",
                             str(tmp_path / "out.cpu.onnx")]}[command]
    assert_usage_error(run(*args), "outside the model's folder")


def test_external_data_in_a_subfolder_still_loads(kit, tmp_path) -> None:
    model = bad_external_data(kit, tmp_path / "m", "subfolder")
    result = run("inspect", str(model))
    assert result.returncode == 0, result.stderr


# --- wrong exit codes: damaged manifests and cards ------------------------------------------------------------


@pytest.mark.parametrize("case", ["not-utf8", "a-list", "nested-100000"])
def test_a_damaged_manifest_is_a_usage_error_naming_it(kit, tmp_path, case) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(kit["onnx"], model)
    manifest = tmp_path / "m.onnx.json"
    manifest.write_bytes({"not-utf8": b'{"a": "\xff\xfe"}', "a-list": b"[1, 2]",
                          "nested-100000": b"[" * 100_000 + b"]" * 100_000}[case])
    for args in (["inspect", str(model)], ["validate", str(model), "--data", str(kit["data"])]):
        assert_usage_error(run(*args), "m.onnx.json: unreadable manifest")


def card_bytes_edited(kit: dict[str, Path], path: Path, edit) -> Path:  # noqa: ANN001 - a bytes editor
    """The kit's model with the serialized card string edited in place (the protobuf stays well-formed)."""
    import onnx

    from resnet_deploy.card import CARD_METADATA_KEY

    model = onnx.load(str(kit["onnx"]))
    card = next(p.value for p in model.metadata_props if p.key == CARD_METADATA_KEY).encode()
    raw = model.SerializeToString()
    path.write_bytes(raw.replace(card, edit(card)))
    return path


def test_non_utf8_bytes_in_the_card_are_a_usage_error(kit, tmp_path) -> None:
    model = card_bytes_edited(kit, tmp_path / "m.onnx", lambda card: b"\xff" + card[1:])
    for args in (["inspect", str(model)], ["validate", str(model), "--data", str(kit["data"])]):
        assert_usage_error(run(*args), "m.onnx", "not UTF-8")


def test_a_card_that_is_not_json_names_the_file(kit, tmp_path) -> None:
    model = card_bytes_edited(kit, tmp_path / "m.onnx", lambda card: b"{" + card[1:].replace(b":", b" ", 1))
    assert_usage_error(run("validate", str(model), "--data", str(kit["data"])), "m.onnx", "not valid JSON")


# --- wrong exit codes: graphs no runtime can load, inputs no machine can hold ---------------------------------


def carded_graph(kit: dict[str, Path], path: Path, nodes: list, input_shape: list, card_edit=None) -> Path:  # noqa: ANN001
    """A tiny classifier graph (→ [N, 2]) carrying the kit's card (edited by `card_edit`)."""
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from resnet_deploy.card import CARD_METADATA_KEY

    card = json.loads(next(p.value for p in onnx.load(str(kit["onnx"])).metadata_props if p.key == CARD_METADATA_KEY))
    if card_edit is not None:
        card_edit(card)
    nodes = [*nodes, helper.make_node("GlobalAveragePool", ["a"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [input_shape[0], 2])],
                              [numpy_helper.from_array(np.ones((2, 3), np.float32), "w"),
                               numpy_helper.from_array(np.zeros(2, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {CARD_METADATA_KEY: json.dumps(card)})
    onnx.save(model, str(path))
    return path


def test_a_graph_with_a_cycle_is_a_usage_error(kit, tmp_path) -> None:
    from onnx import helper

    cycle = [helper.make_node("Add", ["input", "z"], ["a"]), helper.make_node("Identity", ["a"], ["z"])]
    model = carded_graph(kit, tmp_path / "cycle.onnx", cycle, ["N", 3, SIZE, SIZE])
    assert_usage_error(run("validate", str(model), "--data", str(kit["data"])), "cycle.onnx", "not acyclic")


def test_an_onnx_importing_opset_99_is_a_usage_error(kit, tmp_path) -> None:
    import onnx

    model = onnx.load(str(kit["onnx"]))
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 99
    path = tmp_path / "opset99.onnx"
    onnx.save(model, str(path))
    for args in (["validate", str(path), "--data", str(kit["data"])],
                 ["build-engine", "--onnx", str(path), "--target", "onnxruntime", "-o", str(tmp_path / "o.cpu.onnx")]):
        assert_usage_error(run(*args), "opset99.onnx", "opset 99")


def test_bench_refuses_a_static_input_larger_than_memory_before_allocating(kit, tmp_path) -> None:
    from onnx import helper

    def at_4096(card: dict) -> None:
        card["preprocessing"].update(input_size=4096, resize_size=None)

    model = carded_graph(kit, tmp_path / "huge.onnx", [helper.make_node("Identity", ["input"], ["a"])],
                         [600, 3, 4096, 4096], at_4096)  # 112.5 GiB of float32
    assert_usage_error(run("bench", str(model), "--iters", "1"), "huge.onnx", "112.5 GiB", "available")


# --- unclear messages -----------------------------------------------------------------------------------------


def test_inspect_of_a_broken_openvino_ir_gives_openvinos_whole_reason_and_nothing_else(tmp_path) -> None:
    pytest.importorskip("openvino")
    xml = tmp_path / "m.xml"
    xml.write_text("garbage, not an IR")
    (tmp_path / "m.bin").write_bytes(b"x")
    result = run("inspect", str(xml))
    assert_usage_error(result, "m.xml", "OpenVINO cannot read this IR", "Unable to read the model")
    assert result.stderr.strip().startswith("error:"), result.stderr  # no raw native log line before it
    assert "Exception from src" not in result.stderr, result.stderr


def test_class_names_differing_only_in_unicode_form_are_told_apart(kit, tmp_path) -> None:
    import dataclasses

    from resnet_deploy.card import ModelCard, save_card

    composed, decomposed = "caf\u00e9", "cafe\u0301"  # both print as café
    card = ModelCard.default_for("resnet20", class_names=["b", composed])
    card = dataclasses.replace(card, preprocessing=dataclasses.replace(card.preprocessing, input_size=SIZE,
                                                                       resize_size=None))
    save_card(tmp_path / "card.safetensors", card.build_model(), card)
    data = tmp_path / "data"
    shutil.copytree(kit["data"] / "a", data / "b")
    shutil.copytree(kit["data"] / "b", data / decomposed)
    result = run("validate", str(tmp_path / "card.safetensors"), "--data", str(data))
    assert_usage_error(result, ascii(composed), ascii(decomposed), "NFC", "NFD", "Unicode normal form")


def test_a_plain_zip_named_onnx_is_called_a_zip_not_a_pytorch_archive(tmp_path) -> None:
    import zipfile

    path = tmp_path / "model.onnx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
        archive.writestr("resnet.onnx", b"\x08\x07")
    result = run("import-onnx", str(path), "-o", str(tmp_path / "out.onnx"), *FOREIGN_CARD)
    assert_usage_error(result, "a zip archive of 2 file(s)", "resnet.onnx")
    assert "PyTorch" not in result.stderr
