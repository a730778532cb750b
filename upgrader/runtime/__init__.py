"""The torch-free runtime: image decoding, the ONNX Runtime embedder and the FAISS gallery index."""
