"""The fused lookup kernel compiles (nvcc and NVRTC) and exports the entry points the launchers use.

No GPU needed: nvcc and NVRTC only compile. Running the kernel is tests/test_lookup_cuda.py (gpu).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from runtime.errors import CoordGANError
from runtime.lookup import cuda as cl

ENTRY = re.compile(rb"^\.visible \.entry (corr_lookup_\w+)\(", re.M)


def entries(ptx: bytes) -> set[str]:
    return {m.decode() for m in ENTRY.findall(ptx)}


def test_source_is_self_contained():
    """No #include: the same text must compile under nvcc, NVRTC and a TensorRT plugin."""
    src = cl.KERNEL_SOURCE.read_text()
    assert "#include" not in src
    assert f"#define CL_BLOCK {cl.BLOCK}" in src and f"#define CL_TOPK_MAX {cl.TOPK_MAX}" in src


@pytest.mark.parametrize("arch", ["compute_75", "compute_90"])
def test_nvcc_ptx(tmp_path, arch):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    out = tmp_path / f"corr_lookup_{arch}.ptx"
    result = subprocess.run([nvcc, "-ptx", f"-arch={arch}", str(cl.KERNEL_SOURCE), "-o", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert entries(out.read_bytes()) == set(cl.all_kernel_names())
    assert "warning" not in result.stderr.lower(), result.stderr


def test_nvrtc_ptx_of_the_sparse_kernels():
    """The sparse GPU lookup's source compiles under NVRTC too (the path lookup_device loads)."""
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python is not installed")
    from runtime.lookup import cuda_sparse

    try:
        ptx = cl.compile_ptx(75, source=cuda_sparse.SOURCE, cache=False)
    except CoordGANError as exc:
        if "NVRTC could not be loaded" in str(exc):
            pytest.skip(str(exc))
        raise
    assert {m.decode() for m in re.findall(rb"^\.visible \.entry (\w+)\(", ptx, re.M)} == set(
        cuda_sparse.kernel_names())
    assert not re.search(r"^\s*#\s*include", cuda_sparse.SOURCE.read_text(), re.M)  # no headers, as corr_lookup.cu


def test_nvrtc_ptx():
    """The runtime path: cuda-python's NVRTC compiles the source to PTX (no GPU needed)."""
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python is not installed")
    try:
        ptx = cl.compile_ptx(75, cache=False)
    except CoordGANError as exc:
        if "NVRTC could not be loaded" in str(exc):
            pytest.skip(str(exc))
        raise
    assert ptx.endswith(b"\0")
    assert entries(ptx) == set(cl.all_kernel_names())


def test_kernel_names_and_launch_config():
    assert cl.kernel_name("soft", "float32", 5) == "corr_lookup_soft_f32_c8"
    assert cl.kernel_name("topk", "float16", 64) == "corr_lookup_topk_f16_c64"
    assert cl.kernel_name("hard", "float32", 1) == "corr_lookup_hard_f32_c1"
    with pytest.raises(CoordGANError):
        cl.kernel_name("soft", "float32", 65)
    with pytest.raises(CoordGANError):
        cl.kernel_name("soft", "float64", 8)
    assert cl.launch_config(3, 128, 128) == ((128, 3, 1), (128, 1, 1))
    assert cl.launch_config(1, 10, 13) == ((2, 1, 1), (128, 1, 1))


def test_entry_point_abi():
    """Every entry point takes 3 input pointers, 7 int32 scalars, 2 output pointers, in that order:
    the layout cuLaunchKernel (runtime.lookup.cuda) and TensorRT's AOT plugins both rely on."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    result = subprocess.run([nvcc, "-ptx", "-arch=compute_75", str(cl.KERNEL_SOURCE), "-o", "-"],
                            capture_output=True)
    assert result.returncode == 0, result.stderr
    ptx = result.stdout.decode()
    for name in cl.all_kernel_names():
        block = ptx[ptx.index(f".entry {name}(") :]
        params = re.findall(r"\.param \.(\w+) " + name + r"_param_\d+", block[: block.index(")")])
        assert params == ["u64"] * 3 + ["u32"] * 7 + ["u64"] * 2, name
    assert cl.scalar_args(2, 100, 3, 64, 8, 0.01, None) == [2, 100, 3, 64, 8, 1008981770, 0]


def test_trt_plugin_module_is_lazy():
    """Importing the plugin module needs neither TensorRT nor torch; register() says what is missing."""
    import importlib.util

    from export.plugin import trt_plugin

    assert trt_plugin.PLUGIN_ID == "coordgan::CorrLookup"
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(CoordGANError):
            trt_plugin.register()


def test_launcher_rejects_bad_arguments_without_a_gpu():
    """Argument checks come before any CUDA call, so they hold (and are tested) on any machine."""
    import numpy as np

    bad_calls = [
        dict(n=1, hq=4, wq=4, r=1, hk=16, wk=16, c=2, mode="topk", k=65),  # k above the kernel's 64
        dict(n=1, hq=4, wq=4, r=1, hk=4, wk=4, c=65),  # C above 64
        dict(n=1, hq=4, wq=4, r=1, hk=4, wk=4, c=2, dtype="float64"),
        dict(n=1, hq=0, wq=4, r=1, hk=4, wk=4, c=2),
        dict(n=1, hq=4, wq=4, r=1, hk=4, wk=4, c=2, tau=0.0),
        dict(n=1, hq=4, wq=4, r=1, hk=4, wk=4, c=2, mode="soft", k=3),
    ]
    for kw in bad_calls:
        with pytest.raises(CoordGANError):
            cl.lookup_device(1, 1, 1, 1, 1, **kw)
    with pytest.raises(CoordGANError):
        cl.lookup_device(0, 1, 1, 1, 1, n=1, hq=4, wq=4, r=1, hk=4, wk=4, c=2)
    with pytest.raises(CoordGANError):
        cl.lookup_numpy(np.full((1, 2, 4, 4), np.nan, np.float32), np.zeros((1, 1, 2, 4, 4), np.float32),
                        np.ones((1, 1, 2, 4, 4), np.float32))
    if not cl.available():  # no GPU: valid inputs get the one-sentence error, not a traceback
        with pytest.raises(CoordGANError):
            cl.lookup_numpy(np.zeros((1, 2, 4, 4), np.float32), np.zeros((1, 1, 2, 4, 4), np.float32),
                            np.ones((1, 1, 2, 4, 4), np.float32))
