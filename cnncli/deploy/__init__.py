"""Shipping to CPUs and edge runtimes: the int8 gate, OpenVINO IR, torch-free inference, benchmarks.

- `int8`: static int8 quantization of an ONNX graph with an accuracy-and-speed gate
- `openvino`: OpenVINO IR from the verified ONNX graph
- `runtime`: ONNX / OpenVINO files run with numpy in and out (no torch import)
- `preprocess`: image decoding and preprocessing in numpy and Pillow, mirroring the torch path
- `benchmark`: every format side by side with PyTorch eager (`cnncli benchmark`)

Importing this package imports nothing heavy.
"""
