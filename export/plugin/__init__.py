"""The fused correspondence-lookup kernel (corr_lookup.cu) and its TensorRT plugin (trt_plugin.py).

The .cu is data: runtime.lookup.cuda compiles it with NVRTC at run time; trt_plugin embeds its PTX
in TensorRT engines. Nothing here imports torch or TensorRT at import time.
"""
