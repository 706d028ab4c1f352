"""The runtimes resnet-deploy builds for and runs, one `Backend` declaration each.

Adding a runtime: write its engine (engines/, the contract in engines/base.py), its target
(resnet_deploy/targets/, `Target.usable` and `Target.build`), its pyproject extra, and one entry below.
Every table (build-engine's --target, artifacts by suffix, bench's backends and skips, the environment's
versions, Triton's model files, the demo) reads this list; tests/test_registry.py holds each entry to
the engine contract.
"""

from __future__ import annotations

from resnet_deploy.registry.spec import Backend, NotRun, TritonForm

_NO_BF16_ONNX = "no bf16 ONNX model is produced; bf16 runs on torch and openvino (use fp16 here)"

BACKENDS: tuple[Backend, ...] = (
    Backend(
        name="torch", display="PyTorch", engine="engines.torch_engine:TorchEngine",
        suffixes=(".safetensors", ".pt", ".pth", ".th"), precisions=("fp32", "fp16", "bf16"), devices=("cpu", "cuda"),
        module="torch", distributions=("torch",), extra=None,
        opener="resnet_deploy.openers:open_torch", runtime_precisions=("fp32", "fp16", "bf16"),
        missing={"int8": "PyTorch eager has no INT8 path here; INT8 runs from the Q/DQ ONNX (onnxruntime, openvino, "
                         "tensorrt)"},
        not_run=(NotRun("fp16", ("cpu",), "PyTorch FP16 on the CPU is emulated and slow; use bf16, or fp16 with "
                                          "--device cuda"),),
        color="#ee4c2c",
    ),
    Backend(
        name="onnxruntime", display="ONNX Runtime", engine="engines.onnxruntime_engine:OnnxRuntimeEngine",
        suffixes=(".onnx",), precisions=("fp32", "fp16", "int8"), devices=("cpu", "cuda"),
        module="onnxruntime",
        distributions=("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"), extra=None,
        target="resnet_deploy.targets.onnxruntime:OnnxRuntimeTarget",
        opener="resnet_deploy.openers:open_onnxruntime",
        manifest_format="resnet-deploy/onnxruntime",
        manifest_fields=("device", "providers", "optimization_level", "s8_to_u8_pairs", "calibration",
                         "quantization", "fp32_source_sha256"),
        auto_rank=2, verified_on_cpu=True, judged_for=("cpu", "cuda"), keeps_precision_onnx=False,
        missing={"bf16": _NO_BF16_ONNX},
        triton=TritonForm("model.onnx", platform="onnxruntime_onnx"),
        color="#1f77b4",
    ),
    Backend(
        name="openvino", display="OpenVINO", engine="engines.openvino_engine:OpenVINOEngine",
        suffixes=(".xml",), precisions=("fp32", "fp16", "bf16", "int8"), devices=("cpu",),
        module="openvino", distributions=("openvino",), extra="openvino",
        target="resnet_deploy.targets.openvino:OpenVINOTarget",
        opener="resnet_deploy.openers:open_openvino",
        manifest_format="resnet-deploy/openvino-ir",
        manifest_fields=("openvino_version", "inference_precision_hint", "runtime_precision", "compressed_to_fp16",
                         "built_on", "xml_sha256", "bin_sha256"),
        auto_rank=1, verified_on_cpu=True, reads_onnx=True, runtime_precisions=("fp32", "bf16"),
        missing={"int8-fp16": "an FP16 remainder is made for TensorRT; OpenVINO picks the precision of the layers it "
                              "does not quantize itself (its inference precision): use --int8 alone"},
        not_run=(NotRun("fp16", ("cpu",), "OpenVINO on a CPU computes an FP16 model in f32 or bf16; ask for bf16 "
                                          "(its fast reduced precision)", as_computed=True),),
        triton=TritonForm("model.xml", backend="openvino"),
        color="#7b2d8e",
    ),
    Backend(
        name="tensorrt", display="TensorRT", engine="engines.tensorrt.engine:TensorRTEngine",
        suffixes=(".plan", ".engine"), precisions=("fp32", "fp16", "int8"), devices=("cuda",),
        module="tensorrt",
        distributions=("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11", "tensorrt-lean",
                       "tensorrt-dispatch"),
        extra="tensorrt",
        target="resnet_deploy.targets.tensorrt:TensorRTTarget",
        opener="resnet_deploy.openers:open_tensorrt",
        manifest_format="resnet-deploy/tensorrt-engine",
        manifest_fields=("tensorrt_version", "gpu", "batch_profile", "plan_version", "cuda_version",
                         "layer_precisions", "input", "output", "build_options", "plan_sha256"),
        auto_rank=0,
        options={"min_batch": "--min-batch", "opt_batch": "--opt-batch", "max_batch": "--max-batch",
                 "workspace_bytes": "--workspace", "opt_level": "--opt-level", "timing_cache": "--timing-cache",
                 "version_compatible": "--version-compatible",
                 "hardware_compatibility": "--hardware-compatibility"},
        missing={"bf16": _NO_BF16_ONNX},
        triton=TritonForm("model.plan", platform="tensorrt_plan", gpu=True),
        color="#76b900",
    ),
    Backend(
        name="aotinductor", display="PyTorch AOTInductor", engine="engines.aotinductor_engine:AOTInductorEngine",
        suffixes=(".pt2",), precisions=("fp32", "bf16"), devices=("cpu", "cuda"),
        module="torch", distributions=("torch",), extra=None,
        target="resnet_deploy.targets.aotinductor:AOTInductorTarget",
        manifest_format="resnet-deploy/aotinductor-package",
        manifest_fields=("device", "compiled_for", "cpu_isa", "dynamic_batch", "export_seconds", "compile_seconds",
                         "package_metadata"),
        source="card", verified_on_cpu=True, slow_build=True,
        missing={"fp16": "AOTInductor builds FP32 or bf16 from the PyTorch model (no FP16 package here)",
                 "int8": "AOTInductor has no INT8 path here; INT8 runs from the Q/DQ ONNX"},
        color="#ff7f0e",
    ),
)
