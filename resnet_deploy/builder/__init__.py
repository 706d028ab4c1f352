"""The one build pipeline: export if needed → precision (FP16 / calibrated INT8, made and checked in ONNX) → target.

`build(BuildRequest)` is what `resnet-deploy build-engine` runs; bench and the demo call it (or its
stages, `export_source`, `make_precision` and `compile_artifact`, when they cache the intermediate
models themselves). Every usage error that needs no work is raised before any work is done. The
library never prints: progress, notes and warnings go to the `BuildListener` the caller supplies.

What a target can build, which options only it takes and whether it is judged on this CPU come from
its `Backend` declaration; the precision is one declared `Precision` (`BuildRequest.precision`).

| module | holds |
| --- | --- |
| request | `BuildRequest`, `BuildListener`, the checks that need no work |
| sources | the FP32 source (given, exported, or a card-less ONNX carded from flags) and output names |
| stages | `make_precision`, `compile_artifact`, `compile_checked` |
| finetuned | a finetune-int8 model compiled as it is |
| pipeline | `build` |
| report | `BuildReport` |
"""

from resnet_deploy.builder.finetuned import build_finetuned_int8
from resnet_deploy.builder.pipeline import build
from resnet_deploy.builder.report import BuildReport
from resnet_deploy.builder.request import (
    CALIB_METHODS,
    CHECK_IMAGES,
    CPU_TARGETS,
    DEVICES,
    TARGET_FLAGS,
    TARGETS,
    BuildListener,
    BuildRequest,
    check_for_target,
    check_request,
    precision_flags,
    precision_from_flags,
)
from resnet_deploy.builder.sources import (
    adopt_foreign,
    check_output,
    default_output,
    export_model,
    export_source,
    foreign_card,
    refuse_foreign_file,
)
from resnet_deploy.builder.stages import (
    compile_artifact,
    compile_checked,
    cpu_target_for,
    make_precision,
    rebuild_command,
)

__all__ = ["CALIB_METHODS", "CHECK_IMAGES", "CPU_TARGETS", "DEVICES", "TARGETS", "TARGET_FLAGS", "BuildListener",
           "BuildReport", "BuildRequest", "adopt_foreign", "build", "build_finetuned_int8", "check_for_target",
           "check_output", "check_request", "compile_artifact", "compile_checked", "cpu_target_for",
           "default_output", "export_model", "export_source", "foreign_card", "make_precision", "precision_flags",
           "precision_from_flags", "rebuild_command", "refuse_foreign_file"]
