"""ONNX Runtime backend: CPU everywhere, CUDA EP where onnxruntime-gpu and a GPU are present."""
