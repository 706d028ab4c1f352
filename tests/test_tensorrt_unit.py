"""TensorRT code that runs without TensorRT: version dispatch, plan header (and its fallback to the
manifest), manifest and staleness, the version-compatibility rule, inspector precision summaries (JSON
written by hand in NVIDIA's documented 10.x/11.x formats), the "mostly FP32" verdict, the INT8 model the
GPU tests build from, and the clean refusal when TensorRT or a GPU is missing.

TensorRT cannot be installed here, so two tests drive production code with small stand-ins for the
TensorRT Python API surface it touches (a recording engine/context/inspector for the inspector call
order, an `ILogger`/`Severity` pair for the logger's filter). They check the order and the filtering of
calls our code makes, not TensorRT's behaviour; `scripts/tensorrt_smoke.py` checks that on a GPU."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from engines.base import BackendUnavailableError, EngineInputError
from engines.tensorrt.build import TensorRTBuildError, engine_information, profile_shapes, resolve_batch_profile
from engines.tensorrt.inspect import (
    datatype_from_text,
    layer_precision,
    precision_verdict,
    summarize_engine_information,
)
from engines.tensorrt.manifest import (
    EngineManifest,
    ManifestError,
    RunningEnvironment,
    StaleEngineError,
    check_compatible,
    manifest_path,
    read_manifest,
    stale_reasons,
    trusted_plan_version,
)
from engines.tensorrt.support import (
    MIN_VERSION,
    PLAN_TAG,
    device_memory_bytes,
    enum_name,
    header_version,
    load_compatible,
    make_logger,
    normalize_hardware_compatibility,
    parse_version,
    read_plan_version,
    torch_dtype_name,
    version_plan,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here; this checks its absence")


# --------------------------------------------------------------------------------------------------
# Versions and the per-version plan


@pytest.mark.parametrize(("text", "expected"), [
    ("10.13.3.9", (10, 13, 3, 9)),
    ("11.4.0.106", (11, 4, 0, 106)),
    ("10.14.1.48.post1", (10, 14, 1, 48)),
    ("10.16.0", (10, 16, 0)),
    ("11.1.0rc2", (11, 1, 0)),
])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


def test_parse_version_rejects_garbage():
    with pytest.raises(ValueError):
        parse_version("tensorrt")


def test_tensorrt_10_sets_strong_typing_explicitly():
    plan = version_plan((10, 13, 3, 9))
    assert plan.required_network_flags == ("STRONGLY_TYPED",)
    assert plan.optional_network_flags == ()


def test_tensorrt_11_is_always_strongly_typed_and_never_names_explicit_batch():
    plan = version_plan((11, 4, 0, 106))
    assert plan.required_network_flags == ()  # the flag may be gone; strong typing is always on
    assert plan.optional_network_flags == ("STRONGLY_TYPED",)
    for version in ((10, 13), (11, 0), (12, 0)):
        flags = version_plan((*version, 0, 0))
        assert "EXPLICIT_BATCH" not in flags.required_network_flags + flags.optional_network_flags
        # weak-typing precision flags are never set (removed in 11, an error with STRONGLY_TYPED in 10)
        assert {"FP16", "INT8", "BF16", "FP8"} <= set(flags.forbidden_builder_flags)


def test_tensorrt_older_than_10_13_is_refused_with_the_upgrade_hint():
    assert MIN_VERSION == (10, 13)  # strong typing complete from 10.12; pyproject requires tensorrt-cu13>=10.13
    for old in ((8, 6, 1), (10, 12, 0, 36), (10, 0, 1, 6)):
        with pytest.raises(BackendUnavailableError, match=r"TensorRT is not available \(TensorRT .* 10\.13 or newer"):
            version_plan(old)
    assert version_plan((10, 13, 0, 35)).major == 10


@pytest.mark.parametrize(("built", "running", "vc", "ok"), [
    ((10, 13, 3, 9), (10, 13, 3, 9), False, True),
    ((10, 13, 3, 9), (10, 13, 3, 10), False, False),  # another build number: not loadable
    ((10, 13, 3, 9), (10, 16, 1, 11), False, False),
    ((10, 13, 3, 9), (10, 16, 1, 11), True, True),  # version compatible: later runtimes load it
    ((10, 13, 3, 9), (11, 4, 0, 106), True, True),  # 10 → 11 allowed
    ((11, 1, 0, 106), (11, 4, 0, 106), True, True),  # later minor of the same major
    ((11, 1, 0, 106), (10, 16, 1, 11), True, False),  # 11 → 10 never
    ((8, 6, 1, 6), (10, 13, 3, 9), True, True),  # 8 → 10 allowed (support matrix)
    ((8, 6, 1, 6), (11, 4, 0, 106), True, False),  # 8 → 11: two majors, not supported
    ((10, 13, 3, 9), (12, 0, 0, 1), True, False),  # 10 → 12: not in the matrix
    ((8, 6, 1, 6), (9, 3, 0, 1), True, False),  # 8 → 9: not in the matrix either
    ((8, 5, 1, 7), (10, 0, 0, 6), True, False),  # version compatibility starts at 8.6
])
def test_load_compatibility_rules(built, running, vc, ok):
    assert load_compatible(built, running, version_compatible=vc) is ok


# --------------------------------------------------------------------------------------------------
# Plan header


def _plan_header(version: tuple[int, int, int, int], *, tag: int = PLAN_TAG, serialization: int = 0) -> bytes:
    # Documented layout: u32 tag, u32 serialization version, 16 more bytes, then major.minor.patch.build.
    return struct.pack("<II", tag, serialization) + bytes(16) + bytes(version) + b"\x00" * 64


def test_plan_header_version_is_read_from_bytes_24_to_27():
    assert read_plan_version(_plan_header((10, 13, 3, 9))) == (10, 13, 3, 9)
    assert read_plan_version(_plan_header((11, 4, 0, 106))) == (11, 4, 0, 106)
    assert _plan_header((10, 13, 3, 9))[:4] == b"ftrt"  # the tag as it appears in a file


@pytest.mark.parametrize("header", [
    _plan_header((10, 0, 0, 1), tag=0x12345678),
    _plan_header((10, 0, 0, 1), serialization=1),
    b"ftrt",
    b"",
    b"\x08\x01\x12\x07pytorch" + bytes(40),  # an ONNX file's first bytes
])
def test_non_plans_have_no_version(header):
    assert read_plan_version(header) is None


def test_header_version_keeps_one_byte_per_part():
    assert header_version((10, 13, 3, 300)) == (10, 13, 3, 44)
    assert header_version((11, 4, 0, 106, 7)) == (11, 4, 0, 106)


def test_device_memory_prefers_v2_and_falls_back_before_10_1():
    class Engine101:
        device_memory_size_v2 = 1 << 20
        device_memory_size = 7  # deprecated in 10.1, gone in 11.x

    class Engine100:
        device_memory_size = 4096

    assert device_memory_bytes(Engine101()) == 1 << 20
    assert device_memory_bytes(Engine100()) == 4096
    assert device_memory_bytes(object()) is None


# --------------------------------------------------------------------------------------------------
# Data types and options


def test_tensorrt_dtypes_map_to_torch_by_hand_including_bf16_and_fp8():
    torch = pytest.importorskip("torch")
    for trt_name, torch_name in {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
                                 "FP8": "float8_e4m3fn", "INT64": "int64", "BOOL": "bool"}.items():
        assert torch_dtype_name(trt_name) == torch_name
        assert isinstance(getattr(torch, torch_name), torch.dtype)
    assert torch_dtype_name("DataType.HALF") == "float16"
    with pytest.raises(ValueError, match="INT4"):
        torch_dtype_name("INT4")
    with pytest.raises(ValueError):
        torch_dtype_name("COMPLEX")


def test_enum_name_reads_pybind_style_names():
    class Member:
        name = "HALF"

    assert enum_name(Member()) == "HALF"
    assert enum_name("DataType.BF16") == "BF16"


@pytest.mark.parametrize(("text", "expected"), [
    (None, "none"), ("none", "none"), ("ampere+", "ampere_plus"), ("AMPERE_PLUS", "ampere_plus"),
    ("same-cc", "same_compute_capability"), ("same_compute_capability", "same_compute_capability"),
])
def test_hardware_compatibility_names(text, expected):
    assert normalize_hardware_compatibility(text) == expected


def test_unknown_hardware_compatibility_is_refused():
    with pytest.raises(ValueError, match="ampere\\+"):
        normalize_hardware_compatibility("hopper+")


def test_batch_profile_dynamic_and_static():
    assert resolve_batch_profile((-1, 3, 224, 224), 1, 8, 32) == (1, 8, 32)
    assert profile_shapes((-1, 3, 224, 224), (1, 8, 32)) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert resolve_batch_profile((1, 3, 32, 32), 1, 8, 32) is None  # static ONNX, default flags: its own batch
    assert resolve_batch_profile((4, 3, 32, 32), 4, 4, 4) is None
    with pytest.raises(EngineInputError, match="static batch of 1"):
        resolve_batch_profile((1, 3, 32, 32), 1, 16, 64)
    with pytest.raises(EngineInputError, match="only the batch"):
        resolve_batch_profile((-1, 3, -1, -1), 1, 8, 32)
    with pytest.raises(EngineInputError, match="min <= opt <= max"):
        resolve_batch_profile((-1, 3, 32, 32), 8, 4, 32)
    with pytest.raises(EngineInputError, match="NCHW"):
        resolve_batch_profile((-1, 10), 1, 8, 32)


def test_build_options_validation():
    from resnet_deploy.errors import UsageError
    from resnet_deploy.targets.tensorrt import TensorRTBuildOptions, parse_byte_size

    assert TensorRTBuildOptions().validated().hardware_compatibility == "none"
    assert TensorRTBuildOptions(hardware_compatibility="ampere+").validated().hardware_compatibility == "ampere_plus"
    for bad in (TensorRTBuildOptions(min_batch=0), TensorRTBuildOptions(opt_batch=64),
                TensorRTBuildOptions(opt_level=6), TensorRTBuildOptions(workspace_bytes=0),
                TensorRTBuildOptions(hardware_compatibility="any")):
        with pytest.raises(UsageError):
            bad.validated()
    assert parse_byte_size("4G") == parse_byte_size("4GiB") == 4 << 30
    assert parse_byte_size("512M") == 512 << 20
    assert parse_byte_size("1000") == 1000
    with pytest.raises(UsageError):
        parse_byte_size("lots")


# --------------------------------------------------------------------------------------------------
# Manifest and staleness


def _manifest(**changes) -> EngineManifest:
    manifest = EngineManifest(
        tensorrt_version="10.13.3.9", gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0", precision="fp16",
        batch_profile={"min": 1, "opt": 8, "max": 32}, plan_version="10.13.3.9", cuda_version="13.0",
        layer_precisions={"fp16": 20, "fp32": 2}, input={"name": "input", "shape": [-1, 3, 32, 32], "dtype": "FLOAT"},
        output={"name": "logits", "shape": [-1, 10], "dtype": "FLOAT"},
        build_options={"version_compatible": False, "hardware_compatibility": "none", "workspace_bytes": None},
        source_onnx={"path": "m.fp16.onnx", "sha256": "ab" * 32}, plan_sha256="cd" * 32,
        card={"arch": "resnet20", "class_names": ["a", "b"]}, build_seconds=12.5, built_at="2026-01-01T00:00:00+00:00",
    )
    for key, value in changes.items():
        setattr(manifest, key, value)
    return manifest


A100 = RunningEnvironment("10.13.3.9", "NVIDIA A100-SXM4-80GB", (8, 0))


def test_manifest_round_trip_through_a_file(tmp_path: Path):
    plan = tmp_path / "model.fp16.plan"
    manifest = _manifest()
    manifest_path(plan).write_text(manifest.to_json())
    assert manifest_path(plan).name == "model.fp16.plan.json"
    data = json.loads(manifest_path(plan).read_text())
    assert data["gpu"] == {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    assert data["card"]["arch"] == "resnet20"
    assert read_manifest(plan) == manifest


def test_missing_or_malformed_manifest_is_a_clear_error(tmp_path: Path):
    plan = tmp_path / "m.plan"
    with pytest.raises(ManifestError, match="no manifest m.plan.json .* build-engine --target tensorrt"):
        read_manifest(plan)
    manifest_path(plan).write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable manifest"):
        read_manifest(plan)
    manifest_path(plan).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ManifestError, match="not a resnet-deploy TensorRT engine manifest"):
        read_manifest(plan)
    broken = _manifest().to_dict()
    del broken["gpu"]
    manifest_path(plan).write_text(json.dumps(broken))
    with pytest.raises(ManifestError, match="lacks"):
        read_manifest(plan)


def test_same_tensorrt_and_gpu_is_not_stale():
    assert stale_reasons(_manifest(), A100) == []
    check_compatible(_manifest(), A100, plan_path="m.plan")


def test_other_tensorrt_version_is_stale_with_a_rebuild_hint():
    env = RunningEnvironment("10.16.1.11", A100.gpu_name, (8, 0))
    with pytest.raises(StaleEngineError, match=r"built with TensorRT 10\.13\.3\.9 but TensorRT 10\.16\.1\.11") as err:
        check_compatible(_manifest(), env, plan_path="m.plan")
    assert "--version-compatible" in str(err.value)
    assert "build-engine --target tensorrt" in str(err.value)
    assert err.value.exit_code == 2


def test_version_compatible_plans_load_forward_only():
    vc = _manifest(build_options={"version_compatible": True, "hardware_compatibility": "none"})
    assert stale_reasons(vc, RunningEnvironment("11.4.0.106", A100.gpu_name, (8, 0))) == []
    newer = _manifest(tensorrt_version="11.1.0.106", plan_version="11.1.0.106",
                      build_options={"version_compatible": True})
    (reason,) = stale_reasons(newer, RunningEnvironment("10.16.1.11", A100.gpu_name, (8, 0)),
                              plan_version=(11, 1, 0, 106))
    assert "never loads on an older TensorRT" in reason


def test_the_plan_header_version_wins_over_the_manifest():
    # A plan replaced by one from another TensorRT while its manifest stayed: the header tells the truth.
    assert stale_reasons(_manifest(), A100, plan_version=(10, 8, 0, 43))


def test_unreadable_header_falls_back_to_the_manifest():
    ordinary, vc = _manifest(), _manifest(build_options={"version_compatible": True})
    good = _plan_header((10, 13, 3, 9))
    other = _plan_header((10, 8, 0, 43))
    lean = b"\x00" * 8 + bytes(range(40))  # a version-compatible plan whose header does not read as documented
    assert trusted_plan_version(good, ordinary) == (10, 13, 3, 9)
    assert trusted_plan_version(other, ordinary) == (10, 8, 0, 43)  # ordinary plans: the header decides
    assert trusted_plan_version(lean, ordinary) is None  # never "not a plan": the manifest and TensorRT decide
    assert trusted_plan_version(lean, vc) is None
    assert trusted_plan_version(good, vc) == (10, 13, 3, 9)
    # A version-compatible header that disagrees with the manifest is not trusted (layout unverified).
    assert trusted_plan_version(other, vc) is None
    assert stale_reasons(vc, A100, plan_version=trusted_plan_version(other, vc)) == []
    assert stale_reasons(ordinary, A100, plan_version=trusted_plan_version(lean, ordinary)) == []


def test_version_compatible_plan_across_two_majors_names_the_rule():
    vc = _manifest(build_options={"version_compatible": True})
    (reason,) = stale_reasons(vc, RunningEnvironment("12.0.0.1", A100.gpu_name, (8, 0)))
    assert "across major versions only 8 → 10, 10 → 11" in reason


def test_header_version_parts_are_single_bytes():
    # A build number above 255 is stored modulo 256 in the header: still the same TensorRT.
    manifest = _manifest(tensorrt_version="10.13.3.300")
    env = RunningEnvironment("10.13.3.300", A100.gpu_name, (8, 0))
    assert stale_reasons(manifest, env, plan_version=(10, 13, 3, 300 & 0xFF)) == []


def test_other_gpu_is_stale_unless_built_hardware_compatible():
    h100 = RunningEnvironment("10.13.3.9", "NVIDIA H100 80GB HBM3", (9, 0))
    (reason,) = stale_reasons(_manifest(), h100)
    assert "NVIDIA A100-SXM4-80GB (compute capability 8.0)" in reason and "H100" in reason
    assert "ampere+" in reason
    ampere_plus = _manifest(build_options={"hardware_compatibility": "ampere_plus"})
    assert stale_reasons(ampere_plus, h100) == []
    turing = RunningEnvironment("10.13.3.9", "Tesla T4", (7, 5))
    assert stale_reasons(ampere_plus, turing)


def test_same_compute_capability_other_model():
    a30 = RunningEnvironment("10.13.3.9", "NVIDIA A30", (8, 0))
    (reason,) = stale_reasons(_manifest(), a30)
    assert "same-cc" in reason
    same_cc = _manifest(build_options={"hardware_compatibility": "same_compute_capability"})
    assert stale_reasons(same_cc, a30) == []


# --------------------------------------------------------------------------------------------------
# Inspector JSON (written by hand in the documented formats) → realized precision

NHWC8_FP16 = "Channel major FP16 format where channel % 8 == 0"

# 10.x, DETAILED verbosity: long "Format/Datatype" strings, "Bindings" as names. An FP16-typed ResNet
# with FP32 I/O: reformats at the ends (not counted), one FP32 Cast, FP16 convolutions and pooling.
TRT10_FP16 = {
    "Layers": [
        {"Name": "Reformatting CopyNode for Input Tensor 0 to /Cast", "LayerType": "Reformat",
         "Inputs": [{"Name": "input", "Location": "Device", "Dimensions": [8, 3, 32, 32],
                     "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "input_r", "Location": "Device", "Dimensions": [8, 3, 32, 32],
                      "Format/Datatype": "Channel major FP32 format where channel % 4 == 0"}],
         "ParameterType": "Reformat", "Origin": "REFORMAT", "TacticValue": "0x0000000000000000"},
        {"Name": "/Cast", "LayerType": "Cast",
         "Inputs": [{"Name": "input_r", "Dimensions": [8, 3, 32, 32],
                     "Format/Datatype": "Channel major FP32 format where channel % 4 == 0"}],
         "Outputs": [{"Name": "/Cast_output_0", "Dimensions": [8, 3, 32, 32],
                      "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "/conv1/Conv + /relu/Relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "/Cast_output_0", "Dimensions": [8, 3, 32, 32],
                     "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "Outputs": [{"Name": "/relu/Relu_output_0", "Dimensions": [8, 16, 32, 32],
                      "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "ParameterType": "Convolution", "Kernel": [3, 3], "Weights": {"Type": "Half", "Count": 432},
         "Bias": {"Type": "Half", "Count": 16},
         "TacticName": "sm80_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc", "TacticValue": "0x1"},
        {"Name": "/layer1/layer1.0/conv1/Conv + /layer1/layer1.0/relu/Relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "/relu/Relu_output_0", "Format/Datatype": NHWC8_FP16}],
         "Outputs": [{"Name": "a", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "Weights": {"Type": "Half", "Count": 2304}},
        {"Name": "/layer1/layer1.0/conv2/Conv + /layer1/layer1.0/Add + /layer1/layer1.0/relu_1/Relu",
         "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "a", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"},
                    {"Name": "/relu/Relu_output_0", "Format/Datatype": NHWC8_FP16}],
         "Outputs": [{"Name": "b", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "Weights": {"Type": "Half", "Count": 2304}},
        {"Name": "/ReduceMean", "LayerType": "CaskPooling",
         "Inputs": [{"Name": "b", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "Outputs": [{"Name": "c", "Format/Datatype": "Row major linear FP16 format"}]},
        {"Name": "/fc/Gemm", "LayerType": "CaskGemmConvolution",
         "Inputs": [{"Name": "c", "Format/Datatype": "Row major linear FP16 format"}],
         "Outputs": [{"Name": "logits_h", "Format/Datatype": "Row major linear FP16 format"}],
         "Weights": {"Type": "Half", "Count": 640}},
        {"Name": "/fc/Gemm [profile 1]", "LayerType": "CaskGemmConvolution",  # a second profile: not counted twice
         "Inputs": [{"Name": "c", "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "logits_h", "Format/Datatype": "Row major linear FP32"}]},
        {"Name": "/Cast_1", "LayerType": "Cast",
         "Inputs": [{"Name": "logits_h", "Format/Datatype": "Row major linear FP16 format"}],
         "Outputs": [{"Name": "logits", "Format/Datatype": "Row major linear FP32"}]},
        {"Name": "shape_noop", "LayerType": "NoOp",
         "Inputs": [{"Name": "x", "Format/Datatype": "Row major linear FP32"}], "Outputs": []},
    ],
    "Bindings": ["input", "logits"],
}

# 11.x: "I/O Tensors" objects replace "Bindings", and tensors carry "Format" and "DataType" (also
# spelled "Datatype") separately. A Q/DQ INT8 ResNet with an FP16 remainder.
TRT11_INT8 = {
    "Layers": [
        {"Name": "/conv1/input_quantizer/QuantizeLinear", "LayerType": "Scale",
         "Inputs": [{"Name": "input", "Dimensions": [8, 3, 32, 32],
                     "Format": "Row major linear FP32 format (kLINEAR)", "DataType": "Float"}],
         "Outputs": [{"Name": "q", "Dimensions": [8, 3, 32, 32],
                      "Format": "Channel major INT8 format where channel % 4 == 0", "DataType": "Int8"}]},
        {"Name": "/conv1/Conv + /relu/Relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "q", "Format": "Channel major INT8 format where channel % 4 == 0", "DataType": "Int8"}],
         "Outputs": [{"Name": "r", "Format": "Thirty-two wide channel vectorized row major Int8 format",
                      "DataType": "Int8"}],
         "Weights": {"Type": "Int8", "Count": 432}, "Bias": {"Type": "Float", "Count": 16}},
        {"Name": "/layer1/layer1.0/conv1/Conv", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "r", "Format": "Thirty-two wide channel vectorized row major Int8 format",
                     "Datatype": "Int8"}],
         "Outputs": [{"Name": "s", "Format": "Thirty-two wide channel vectorized row major Int8 format",
                      "Datatype": "Int8"}],
         "Weights": {"Type": "Int8", "Count": 2304}},
        {"Name": "Reformatting CopyNode for Input Tensor 0 to /ReduceMean",  # no LayerType: named as a reformat
         "Inputs": [{"Name": "s", "DataType": "Int8"}], "Outputs": [{"Name": "s2", "DataType": "Half"}]},
        {"Name": "/ReduceMean", "LayerType": "CaskPooling",
         "Inputs": [{"Name": "s2", "Format": "Channel major FP16 format where channel % 8 == 0", "DataType": "Half"}],
         "Outputs": [{"Name": "t", "DataType": "Half"}]},
        {"Name": "/fc/Gemm", "LayerType": "CaskGemmConvolution",
         "Inputs": [{"Name": "t", "DataType": "Half"}], "Outputs": [{"Name": "logits", "DataType": "Float"}],
         "Weights": {"Type": "Half", "Count": 640}},
    ],
    "I/O Tensors": [
        {"Name": "input", "IOMode": "Input", "DataType": "Float", "Dimensions": [-1, 3, 32, 32], "Location": "Device",
         "IsShapeInferenceIO": False, "ProfileInfo": [{"MinShape": [1, 3, 32, 32], "OptShape": [8, 3, 32, 32],
                                                       "MaxShape": [32, 3, 32, 32],
                                                       "Format": "Row major linear FP32 format (kLINEAR)"}]},
        {"Name": "logits", "IOMode": "Output", "DataType": "Float", "Dimensions": [-1, 10], "Location": "Device",
         "IsShapeInferenceIO": False},
    ],
}

# Built without DETAILED verbosity: names only.
TRT_NAMES_ONLY = {"Layers": ["/conv1/Conv + /relu/Relu", "/ReduceMean", "/fc/Gemm"], "Bindings": ["input", "logits"]}


@pytest.mark.parametrize(("text", "expected"), [
    ("Row major linear FP32", "fp32"),
    ("Channel major FP16 format where channel % 8 == 0", "fp16"),
    ("Thirty-two wide channel vectorized row major Int8 format", "int8"),
    ("Row major linear BFloat16 format", "bf16"),
    ("Channel major BFloat16 format where channel % 8 == 0", "bf16"),
    ("Row major linear FP8 format", "fp8"),
    ("Row major linear UInt8 format", "uint8"),
    ("Row major linear Int32", "int32"),
    ("Row major linear FP32 format (kLINEAR)", "fp32"),
    ("Float", "fp32"), ("Half", "fp16"), ("Int8", "int8"), ("BFloat16", "bf16"), ("FP8", "fp8"),
    ("Unknown format", None), (None, None),
])
def test_datatype_strings_long_and_short(text, expected):
    assert datatype_from_text(text) == expected


def test_bf16_is_matched_before_float():
    assert datatype_from_text("BFloat16") == "bf16"  # contains "Float"
    assert layer_precision({"Inputs": [{"DataType": "BFloat16"}], "Weights": {"Type": "Float"}}) == "bf16"


def test_tensor_formats_decide_and_weights_only_fill_in_what_lacks_one():
    layer = {"Inputs": [{"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
             "Weights": {"Type": "Int8", "Count": 2304}}
    assert layer_precision(layer) == "fp16"  # int8 weights feeding fp16 math: the math is fp16
    no_format = {"Inputs": [{"Name": "x", "Dimensions": [-1, 16, 32, 32]}], "Weights": {"Type": "Int8", "Count": 9}}
    assert layer_precision(no_format) == "int8"  # inspected without a context: no format, weights fill in
    assert layer_precision({"Weights": {"Type": "Half", "Count": 10}}) == "fp16"  # no tensors: weights type
    assert layer_precision({"Name": "x"}) == "unknown"


def test_cast_layers_are_not_fp32_compute():
    cast = {"Name": "/Cast", "LayerType": "Cast", "Inputs": [{"Format/Datatype": "Row major linear FP32"}],
            "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]}
    conv = {"Name": "/conv", "LayerType": "CaskConvolution", "Inputs": [{"DataType": "Half"}]}
    summary = summarize_engine_information({"Layers": [cast, conv, {**cast, "Name": "/Cast_1"}]})
    assert summary.counts == {"fp16": 1}
    assert [layer.compute for layer in summary.layers] == [False, True, False]


def test_trt10_detailed_fp16_summary():
    summary = summarize_engine_information(json.dumps(TRT10_FP16))
    assert summary.detailed
    assert summary.io_tensors == ["input", "logits"]
    # The two Casts (FP32 I/O), the reformat, the NoOp and the [profile 1] copy are not counted.
    assert summary.counts == {"fp16": 5}
    assert summary.compute_layers == 5
    verdict = precision_verdict(summary, "fp16")
    assert verdict.passed and verdict.verified
    assert verdict.reduced_fraction == 1.0


def test_trt11_split_fields_int8_summary():
    summary = summarize_engine_information(TRT11_INT8)
    assert summary.io_tensors == ["input", "logits"]
    assert summary.counts == {"int8": 2, "fp32": 1, "fp16": 2}
    assert {layer.name: layer.precision for layer in summary.layers}["/conv1/Conv + /relu/Relu"] == "int8"
    verdict = precision_verdict(summary, "int8")
    assert verdict.passed and verdict.verified


def test_names_only_inspector_cannot_verify():
    summary = summarize_engine_information(TRT_NAMES_ONLY)
    assert not summary.detailed and summary.counts == {}
    verdict = precision_verdict(summary, "fp16")
    assert not verdict.passed and not verdict.verified  # not verified is not a pass
    assert "could not be verified" in verdict.message and "DETAILED" in verdict.message


def _without_types(engine: dict, *names: str) -> dict:
    """`engine` with the data types (tensor formats, weights) of the named layers removed (all when none named)."""
    text = json.loads(json.dumps(engine))
    for layer in text["Layers"]:
        if names and layer["Name"] not in names:
            continue
        for key in ("Weights", "Bias"):
            layer.pop(key, None)
        for tensor in layer.get("Inputs", []) + layer.get("Outputs", []):
            for key in ("Format/Datatype", "Format", "DataType", "Datatype"):
                tensor.pop(key, None)
    return text


def test_unknown_precision_on_every_layer_is_not_verified():
    summary = summarize_engine_information(_without_types(TRT10_FP16))
    assert summary.detailed and summary.counts == {"unknown": 5}
    verdict = precision_verdict(summary, "fp16")
    assert not verdict.passed and not verdict.verified
    assert verdict.unknown_fraction == 1.0 and verdict.to_dict()["unknown_fraction"] == 1.0
    assert "could not be verified: 5 of its 5 compute layers report no data type" in verdict.message
    int8 = precision_verdict(summarize_engine_information(_without_types(TRT11_INT8)), "int8")
    assert not int8.passed and not int8.verified  # not "no INT8 layer": the unknowns may well be INT8
    assert "could not be verified" in int8.message
    assert precision_verdict(summary, "fp32").passed and not precision_verdict(summary, "fp32").verified


def test_unknown_layers_that_could_make_fp32_the_majority_are_not_verified():
    convs = ["/conv1/Conv + /relu/Relu", "/layer1/layer1.0/conv1/Conv + /layer1/layer1.0/relu/Relu",
             "/ReduceMean"]
    summary = summarize_engine_information(_without_types(TRT10_FP16, *convs))
    assert summary.counts == {"unknown": 3, "fp16": 2}
    verdict = precision_verdict(summary, "fp16")  # 3 of 5 unknown: FP32 could be the majority
    assert not verdict.passed and not verdict.verified and "3 of its 5 compute layers" in verdict.message
    one = precision_verdict(summarize_engine_information(_without_types(TRT10_FP16, "/ReduceMean")), "fp16")
    assert one.passed and one.verified  # 1 of 5: FP16 holds whatever it runs in
    mostly_fp32 = summarize_engine_information(_without_types(_all_fp32(TRT10_FP16), "/ReduceMean"))
    failed = precision_verdict(mostly_fp32, "fp16")  # 4 of 5 FP32: a verified failure, unknowns or not
    assert not failed.passed and failed.verified and "in FP32" in failed.message


def test_the_build_step_refuses_an_unverified_engine_with_check_failed(tmp_path: Path):
    from resnet_deploy.errors import CheckFailed
    from resnet_deploy.targets.tensorrt import check_realized_precision

    output = tmp_path / "m.fp16.plan"
    for info in (_without_types(TRT10_FP16), TRT_NAMES_ONLY):
        with pytest.raises(CheckFailed, match="could not be verified") as err:
            check_realized_precision(json.dumps(info), "fp16", output)
        assert str(err.value).startswith(f"{output}: ") and str(err.value).endswith("no engine was written")
        assert err.value.exit_code == 1
    summary, verdict = check_realized_precision(json.dumps(TRT10_FP16), "fp16", output)
    assert verdict.passed and verdict.verified and summary.counts == {"fp16": 5}
    assert check_realized_precision(json.dumps(_without_types(TRT10_FP16)), "fp32", output)[1].passed


def _all_fp32(engine: dict) -> dict:
    text = json.dumps(engine)
    for old in ("Channel major FP16 format where channel % 8 == 0", "Row major linear FP16 format", '"Half"'):
        text = text.replace(old, '"Float"' if old == '"Half"' else "Row major linear FP32")
    return json.loads(text)


def test_mostly_fp32_fp16_engine_fails_the_check():
    summary = summarize_engine_information(_all_fp32(TRT10_FP16))
    assert summary.counts == {"fp32": 5}
    verdict = precision_verdict(summary, "fp16")
    assert not verdict.passed and verdict.verified
    assert verdict.fp32_fraction == 1.0
    assert "100% of its 5 compute layers in FP32" in verdict.message
    assert precision_verdict(summary, "fp32").passed  # an FP32 request is what it is


def test_int8_engine_without_int8_layers_fails():
    fp16_only = summarize_engine_information(TRT10_FP16)
    verdict = precision_verdict(fp16_only, "int8")
    assert not verdict.passed and "no INT8 compute layer" in verdict.message


def test_verdict_threshold_is_a_majority():
    half = {"Layers": [{"Name": "a", "LayerType": "CaskConvolution", "Inputs": [{"DataType": "Float"}]},
                       {"Name": "b", "LayerType": "CaskConvolution", "Inputs": [{"DataType": "Half"}]}]}
    assert precision_verdict(summarize_engine_information(half), "fp16").passed  # 50 % FP32 is not "mostly"
    half["Layers"].append({"Name": "c", "LayerType": "CaskPooling", "Inputs": [{"DataType": "Float"}]})
    assert not precision_verdict(summarize_engine_information(half), "fp16").passed


# --------------------------------------------------------------------------------------------------
# The calls made against TensorRT's Python API (stand-ins for the API surface: TensorRT cannot be installed)


class _Recorder:
    """Records, in order, the calls production code makes on the TensorRT objects below."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []


class _Inspector:
    def __init__(self, rec: _Recorder, attach: bool = True) -> None:
        self._rec, self._attach = rec, attach
        self._context = None

    @property
    def execution_context(self):
        return self._context

    @execution_context.setter
    def execution_context(self, context) -> None:  # pybind property: IEngineInspector::setExecutionContext
        self._rec.calls.append(("inspector.execution_context", context.shapes.copy()))
        if self._attach:  # a refusal (setExecutionContext returned false) leaves no context; the setter says nothing
            self._context = context

    def get_engine_information(self, fmt) -> str:
        shapes = self._context.shapes if self._context is not None else None
        self._rec.calls.append(("get_engine_information", fmt, shapes))
        return json.dumps({"Layers": [], "context_shapes": shapes})

    def __del__(self) -> None:
        self._rec.calls.append(("inspector released",))


class _Context:
    def __init__(self, rec: _Recorder, accept: bool) -> None:
        self._rec, self._accept, self.shapes = rec, accept, {}

    def set_input_shape(self, name: str, shape) -> bool:
        self._rec.calls.append(("set_input_shape", name, tuple(shape)))
        if self._accept:
            self.shapes[name] = tuple(shape)
        return self._accept


class _Engine:
    def __init__(self, rec: _Recorder, *, context: bool = True, accept: bool = True, inspector: bool = True,
                 attach: bool = True) -> None:
        self._rec, self._context, self._accept = rec, context, accept
        self._inspector, self._attach = inspector, attach

    def create_execution_context(self):
        self._rec.calls.append(("create_execution_context",))
        return _Context(self._rec, self._accept) if self._context else None

    def create_engine_inspector(self):
        self._rec.calls.append(("create_engine_inspector",))
        return _Inspector(self._rec, self._attach) if self._inspector else None


class _TRT:
    class LayerInformationFormat:
        JSON = "JSON"


def test_inspector_reads_through_a_context_set_to_the_opt_shape():
    rec = _Recorder()
    info = json.loads(engine_information(_TRT, _Engine(rec), "input", (8, 3, 32, 32)))
    assert info["context_shapes"] == {"input": [8, 3, 32, 32]}  # the JSON was read with the shape in place
    names = [call[0] for call in rec.calls]
    assert names == ["create_execution_context", "set_input_shape", "create_engine_inspector",
                     "inspector.execution_context", "get_engine_information", "inspector released"]
    assert rec.calls[1] == ("set_input_shape", "input", (8, 3, 32, 32))
    assert rec.calls[3] == ("inspector.execution_context", {"input": (8, 3, 32, 32)})  # shape set before attaching
    assert rec.calls[4][1] == "JSON"


def test_inspector_without_a_context_or_shape_is_a_build_error():
    with pytest.raises(TensorRTBuildError, match="could not create an execution context"):
        engine_information(_TRT, _Engine(_Recorder(), context=False), "input", (8, 3, 32, 32))
    rec = _Recorder()
    with pytest.raises(TensorRTBuildError, match=r"refused input shape \[64, 3, 32, 32\]"):
        engine_information(_TRT, _Engine(rec, accept=False), "input", (64, 3, 32, 32))
    assert "get_engine_information" not in [call[0] for call in rec.calls]


def test_a_refused_inspector_attach_is_a_build_error():
    rec = _Recorder()
    with pytest.raises(TensorRTBuildError, match="refused to attach the execution context to the engine inspector"):
        engine_information(_TRT, _Engine(rec, attach=False), "input", (8, 3, 32, 32))
    names = [call[0] for call in rec.calls]
    assert "inspector.execution_context" in names and "get_engine_information" not in names
    assert names[-1] == "inspector released"
    with pytest.raises(TensorRTBuildError, match="could not create an engine inspector"):
        engine_information(_TRT, _Engine(_Recorder(), inspector=False), "input", (8, 3, 32, 32))


def test_the_build_asks_for_detailed_profiling_verbosity():
    from engines.tensorrt.build import BuildSettings, _configure

    class Trt:
        class ProfilingVerbosity:
            LAYER_NAMES_ONLY, DETAILED = "LAYER_NAMES_ONLY", "DETAILED"

        class BuilderFlag:
            pass

    class Config:
        profiling_verbosity = Trt.ProfilingVerbosity.LAYER_NAMES_ONLY  # TensorRT's default

    config = Config()
    _configure(Trt, version_plan(parse_version("10.13.3.9")), config, BuildSettings(), "none")
    assert config.profiling_verbosity == "DETAILED"  # the per-layer formats the precision check reads


class _Message:
    """A log message that records whether anything formatted it."""

    formatted = 0

    def __format__(self, spec: str) -> str:
        type(self).formatted += 1
        return "message"


def _fake_tensorrt_logging():
    import enum

    class Severity(enum.IntEnum):  # the values and names of trt.ILogger.Severity
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self) -> None:
            pass

    ILogger.Severity = Severity
    return type("tensorrt", (), {"ILogger": ILogger})


def test_logger_filters_by_severity_before_formatting():
    trt = _fake_tensorrt_logging()
    severity = trt.ILogger.Severity
    logger = make_logger(trt)
    _Message.formatted = 0
    for _ in range(1000):
        logger.log(severity.VERBOSE, _Message())
    assert _Message.formatted == 0 and logger.tail() == []
    logger.log(severity.INFO, "built")
    logger.log(severity.WARNING, "slow tactic")
    logger.log(severity.ERROR, "boom")
    assert logger.tail() == ["[INFO] built", "[WARNING] slow tactic", "[ERROR] boom"]
    assert logger.warnings() == ["[WARNING] slow tactic", "[ERROR] boom"]
    quiet = make_logger(trt, min_severity="warning")
    quiet.log(severity.INFO, _Message())
    quiet.log(severity.INTERNAL_ERROR, "bad")
    assert quiet.tail() == ["[INTERNAL_ERROR] bad"] and _Message.formatted == 0
    with pytest.raises(ValueError, match="unknown TensorRT log severity"):
        make_logger(trt, min_severity="chatty")


# --------------------------------------------------------------------------------------------------
# The INT8 model the GPU tests compile: production quantize_int8, random calibration

#: element types TensorRT's DequantizeLinear accepts as its input (onnx-tensorrt operators.md)
TENSORRT_DQ_INPUT_TYPES = frozenset({"INT8", "FLOAT8E4M3FN", "FLOAT4E2M1", "INT4"})


def _dequantize_input_types(model) -> dict[str, str]:
    """DequantizeLinear node name → element type of its quantized input."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.value_info, *graph.input, *graph.output):
        types.setdefault(info.name, info.type.tensor_type.elem_type)
    return {node.name or node.output[0]: onnx.TensorProto.DataType.Name(types.get(node.input[0], 0))
            for node in graph.node if node.op_type == "DequantizeLinear"}


@pytest.fixture(scope="module")
def int8_onnx(tmp_path_factory):
    from resnet_deploy.checkpoints import random_model
    from resnet_deploy.export import export_onnx
    from resnet_deploy.precision import quantize_int8

    workdir = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(random_model("resnet20"), workdir / "resnet20.onnx").path
    # The same call as tests/test_tensorrt_gpu.py's onnx_int8 fixture.
    return quantize_int8(fp32, workdir / "resnet20.int8.onnx", calib_data=None, samples=8, check_samples=8,
                         random_calibration=True).path


def test_int8_model_for_tensorrt_has_no_int32_into_a_dequantize(int8_onnx):
    import onnx

    model = onnx.load(str(int8_onnx))
    dq_types = _dequantize_input_types(model)
    assert len(dq_types) > 20  # weights and activations of every convolution and the classifier
    assert set(dq_types.values()) <= TENSORRT_DQ_INPUT_TYPES, {k: v for k, v in dq_types.items() if v != "INT8"}
    initializers = {t.name for t in model.graph.initializer}
    gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    assert gemm.input[2] in initializers  # the classifier bias stays a float initializer, no Q/DQ pair
    assert onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == gemm.input[2])).dtype \
        == np.float32


def test_int32_bias_recipe_would_be_caught():
    # The check above must be able to fail: ORT's default (QuantizeBias on) feeds an INT32 bias to a DQ.
    from onnx import TensorProto, helper, numpy_helper

    bias = numpy_helper.from_array(np.array([5, -3], dtype=np.int32), "bias_quantized")
    scale = numpy_helper.from_array(np.array(0.01, dtype=np.float32), "bias_scale")
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["bias_quantized", "bias_scale"], ["bias"])],
                              "g", [], [helper.make_tensor_value_info("bias", TensorProto.FLOAT, [2])],
                              [bias, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert set(_dequantize_input_types(model).values()) == {"INT32"}
    assert not set(_dequantize_input_types(model).values()) <= TENSORRT_DQ_INPUT_TYPES


# --------------------------------------------------------------------------------------------------
# Without TensorRT (this machine): clean refusals that name what to install


@needs_no_tensorrt
def test_opening_a_plan_without_tensorrt_names_the_extra(tmp_path: Path):
    from engines.tensorrt.engine import TensorRTEngine

    plan = tmp_path / "model.plan"
    plan.write_bytes(_plan_header((10, 13, 3, 9)))
    with pytest.raises(BackendUnavailableError) as err:
        TensorRTEngine(plan)
    message = str(err.value)
    assert message.startswith("TensorRT is not available (pip install 'resnet-deploy[tensorrt]'")
    assert err.value.exit_code == 2


@needs_no_tensorrt
def test_open_engine_dispatches_plans_to_tensorrt(tmp_path: Path):
    from resnet_deploy.artifacts import open_engine

    plan = tmp_path / "model.engine"
    plan.write_bytes(_plan_header((10, 13, 3, 9)))
    with pytest.raises(BackendUnavailableError, match=r"^TensorRT is not available \(pip install"):
        open_engine(plan, device="cuda")


@needs_no_tensorrt
def test_build_without_tensorrt_is_a_usage_error_before_any_work(tmp_path: Path):
    from resnet_deploy.errors import BackendUnavailable
    from resnet_deploy.targets.tensorrt import build_tensorrt_engine, tensorrt_usable

    usable, reason = tensorrt_usable()
    assert not usable and "resnet-deploy[tensorrt]" in reason
    with pytest.raises(BackendUnavailable, match=r"^TensorRT is not available \(pip install") as err:
        build_tensorrt_engine(tmp_path / "missing.onnx", tmp_path / "m.plan", precision="fp16")
    assert err.value.exit_code == 2
    assert not (tmp_path / "m.plan").exists() and not (tmp_path / "m.plan.json").exists()


def _tiny_onnx(path: Path) -> Path:
    """A two-node ONNX classifier with a model card in its metadata (made with onnx.helper, no export)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from resnet_deploy.card import ModelCard

    weight = numpy_helper.from_array(np.ones((10, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    card = ModelCard.default_for("resnet20")
    helper.set_model_props(model, {"resnet_deploy.card": card.to_json()})
    onnx.save(model, str(path))
    return path


@needs_no_tensorrt
def test_cli_build_engine_target_tensorrt_without_tensorrt_exits_2(tmp_path: Path, cli):
    onnx_path = _tiny_onnx(tmp_path / "tiny.onnx")
    result = cli("build-engine", "--onnx", str(onnx_path), "--target", "tensorrt", "--output", str(tmp_path / "t.plan"))
    assert result.returncode == 2, result.stderr
    assert "error: TensorRT is not available (" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "t.plan").exists()


# --------------------------------------------------------------------------------------------------
# scripts/tensorrt_smoke.py: its own bookkeeping (the checks themselves need a GPU)


def _smoke_module():
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "scripts" / "tensorrt_smoke.py"
    spec = importlib.util.spec_from_file_location("tensorrt_smoke", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_smoke_checks_run_independently_and_record_each_answer(tmp_path: Path):
    import time

    smoke_mod = _smoke_module()
    smoke = smoke_mod.Smoke(out=tmp_path, deadline=time.monotonic() + 60, skip=frozenset({"skipped_by_flag"}))

    def broken(_smoke):
        raise RuntimeError("TensorRT said no")

    def says_no(_smoke):
        raise smoke_mod.CheckFailed("header differs")

    smoke.run("broken", broken)
    smoke.run("says_no", says_no)
    smoke.run("fine", lambda _smoke: {"answer": 42})
    smoke.run("needs_a_plan", lambda _smoke: {}, plans=("fp32",))
    smoke.run("skipped_by_flag", lambda _smoke: {})
    smoke.deadline = time.monotonic() - 1
    smoke.run("late", lambda _smoke: {})
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {name: entry["status"] for name, entry in saved.items()} == {
        "broken": "error", "says_no": "failed", "fine": "ok", "needs_a_plan": "skipped", "skipped_by_flag": "skipped",
        "late": "skipped"}
    assert saved["broken"]["reason"] == "RuntimeError: TensorRT said no"
    assert saved["fine"]["answer"] == 42
    assert "the fp32 plan" in saved["needs_a_plan"]["reason"]
    assert saved["late"]["reason"] == "over the time budget"


def test_smoke_summarizes_inspector_keys():
    keys = _smoke_module().keys_of(json.dumps(TRT11_INT8))
    assert keys["top_level"] == ["I/O Tensors", "Layers"]
    assert keys["layers"] == 6
    assert keys["layer_keys"]["Weights"] == 3
    assert {"DataType", "Datatype", "Format", "Name"} <= set(keys["tensor_keys"])
    assert keys["layer_types"]["CaskConvolution"] == 2


@needs_no_tensorrt
def test_smoke_without_tensorrt_exits_2_and_says_why(tmp_path: Path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "tensorrt_smoke.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "error: TensorRT is not available" in done.stderr and "Traceback" not in done.stderr
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["preflight"]["status"] == "unavailable"


def test_the_one_manifest_carries_every_field_the_engine_reads(tmp_path: Path):
    """targets/tensorrt writes resnet_deploy's Manifest; engines/tensorrt reads its own fields back from it."""
    import onnx
    from onnx import TensorProto, helper

    from engines.tensorrt.build import BuildOutput, TensorSpec
    from resnet_deploy.artifacts import MANIFEST_SCHEMA_VERSION, Artifact, Manifest
    from resnet_deploy.targets.tensorrt import TensorRTBuildOptions
    from resnet_deploy.targets.tensorrt import _manifest as target_manifest

    source = tmp_path / "m.fp16.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), str(source))
    built = BuildOutput(plan=b"plan bytes", engine_information="{}", input=TensorSpec("x", (-1, 3), "FLOAT"),
                        output=TensorSpec("y", (-1, 3), "FLOAT"), batch_profile=(1, 4, 8), tensorrt_version="10.13.3.9",
                        plan_version=(10, 13, 3, 9), build_seconds=1.25, timing_cache=None, timing_cache_status="off")
    plan = tmp_path / "m.fp16.plan"
    plan.write_bytes(built.plan)
    written = target_manifest(built, source, plan, "fp16", TensorRTBuildOptions(max_batch=8, opt_batch=4),
                              {"arch": "resnet20"}, {"fp16": 20}, {"passed": True}, "NVIDIA H200", "9.0", "575.1")
    written.write(plan)
    engine_side = read_manifest(plan)
    assert (engine_side.tensorrt_version, engine_side.gpu_name, engine_side.compute_capability) == \
        ("10.13.3.9", "NVIDIA H200", "9.0")
    assert engine_side.precision == "fp16" and engine_side.batch_profile == {"min": 1, "opt": 4, "max": 8}
    assert engine_side.layer_precisions == {"fp16": 20} and engine_side.card == {"arch": "resnet20"}
    assert engine_side.versions["tensorrt"] == "10.13.3.9" and engine_side.versions["nvidia_driver"] == "575.1"
    library_side = Artifact(plan).manifest
    assert isinstance(library_side, Manifest) and library_side.backend == "tensorrt"
    assert library_side.schema_version == MANIFEST_SCHEMA_VERSION and library_side.artifact_check == {"passed": True}
    assert library_side.to_dict() == json.loads(manifest_path(plan).read_text())
    assert Artifact(plan).precision == "fp16"
