"""PyTorch -> ONNX -> TensorRT: export_onnx (onnx_export.py) with verification against PyTorch
(verify.py), TensorRT engines (tensorrt_build.py), the lookup op's ONNX graph (lookup_onnx.py) and
TensorRT plugin (plugin/), and the one export cache (cache.py). Uses coordgan and runtime."""
