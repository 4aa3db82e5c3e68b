"""The TensorRT plugin of the fused correspondence lookup (trt_plugin.py).

The kernel is runtime/lookup/corr_lookup.cu: runtime.lookup.cuda compiles it with NVRTC at run
time, and the plugin embeds its PTX in TensorRT engines. Nothing here imports torch or TensorRT
at import time.
"""
