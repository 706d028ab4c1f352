"""Any image-classifier ONNX a user brings: its I/O and graph cleaning (graph.py), and its card (card.py)."""
