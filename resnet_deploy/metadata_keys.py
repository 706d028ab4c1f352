"""Metadata keys that the lowest modules need (a card reads its own key; artifacts.py re-exports it).

Kept apart from `artifacts.py` so `card.py` can read its key without importing the module that opens
artifacts (which imports the card in turn).
"""

CARD_KEY = "resnet_deploy.card"  # the model card, as JSON (ONNX metadata_props and safetensors metadata)
