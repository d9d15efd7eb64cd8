"""Front ends: networks from elsewhere as tinybridge.graph.Graph.

`tflite.load(path_or_bytes)` reads an int8 .tflite file; `torch.load(module, calibration=...,
input_shape=...)` quantizes a float torch.nn.Module (PyTorch is imported only there). Both return
the network with its own classifier and nothing trained; `tinybridge.compile` takes it from there.
See docs/compiler.md ("TFLite models", "PyTorch models").
"""
