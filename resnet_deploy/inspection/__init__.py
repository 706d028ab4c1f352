"""`inspect`: what a model card, an ONNX model or a built artifact is and costs (summaries; commands render)."""
