"""The metadata keys the pipeline writes into ONNX `metadata_props` (and the card's key in safetensors metadata).

Defined here, below every module that reads or writes them (`card.py`, `precision/`, `artifacts.py`, which
re-exports them), so none has to import the module that opens artifacts to learn a key's name.
"""

CARD_KEY = "resnet_deploy.card"  # the model card, as JSON (ONNX metadata_props and safetensors metadata)
PRECISION_KEY = "resnet_deploy.precision"  # fp32 | fp16 | int8
ARTIFACT_KEY = "resnet_deploy.artifact"  # set on runtime-specific artifacts (ONNX Runtime target)
SOURCE_ONNX_SHA256_KEY = "resnet_deploy.source_onnx_sha256"  # the FP32 ONNX a precision model came from
FP16_KEY = "resnet_deploy.fp16"  # how FP16 was made (converter, FP32 nodes kept)
FP16_REMAINDER_KEY = "resnet_deploy.fp16_remainder"  # INT8 with the unquantized rest in FP16
QUANTIZATION_KEY = "resnet_deploy.quantization"
CALIBRATION_KEY = "resnet_deploy.calibration"
VERIFICATION_KEY = "resnet_deploy.verification"  # the precision model's check against FP32
MIXED_PRECISION_KEY = "resnet_deploy.mixed_precision"  # INT8: the budget search's steps and the layers kept out
ONNXRUNTIME_KEY = "resnet_deploy.onnxruntime"  # how the ONNX Runtime artifact was optimized
