"""A real tritonserver for tests, and a minimal python-backend repository to check the server itself.

Tests that need the server skip (with the reason) where the nvidia-pytriton wheel is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import textwrap
from pathlib import Path

import pytest

from triton_models.server import TritonServer

needs_tritonserver = pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None,
    reason="no tritonserver: the nvidia-pytriton wheel is not installed (pip install --no-deps nvidia-pytriton)")


@contextlib.contextmanager
def start_server(repo, **options):
    """A started server on free ports; its log is printed if the test fails while it runs."""
    server = TritonServer(repo, http_port=0, grpc_port=0, **options)
    with server:
        try:
            yield server
        except BaseException:
            print(server.log_text()[-4000:])
            raise


ECHO_MODEL = '''\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Y = 2 X, one response per request (numpy-2-safe dlpack I/O)."""

    def execute(self, requests):
        responses = []
        for request in requests:
            x = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "X"))
            y = np.ascontiguousarray(2 * x, dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack("Y", y)]))
        return responses
'''


def write_echo_repo(root: Path, *, name: str = "echo", dynamic_batching: bool = True) -> Path:
    """root/<name>: a python-backend model doubling a float32 vector of 4 (batching up to 8)."""
    model = Path(root) / name
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(ECHO_MODEL)
    batching = "dynamic_batching { max_queue_delay_microseconds: 500 }" if dynamic_batching else ""
    (model / "config.pbtxt").write_text(textwrap.dedent(f'''\
        name: "{name}"
        backend: "python"
        max_batch_size: 8
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
        instance_group [ {{ kind: KIND_CPU count: 1 }} ]
        {batching}
        '''))
    return Path(root)
