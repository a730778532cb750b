"""Vocabulary defined once, the ONNX artifact contract, errors and small shared helpers."""
