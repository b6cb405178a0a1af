"""edgeinfer: a gRPC edge-inference daemon.

One shared ONNX model per configured model, turned into the fastest runnable
form on this device (a TensorRT engine built here, or ONNX Runtime), served
over gRPC. See README.md for the architecture.
"""

__version__ = "0.1.0"
