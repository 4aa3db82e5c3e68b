"""Triton backend: a model on a Triton Inference Server, through tritonclient (gRPC or HTTP).

Addresses: `triton://host:port/model` (gRPC), `triton+grpc://...`, `triton+http://...`; an
optional `@version` after the model name. The server scales the work over its GPUs and
instances; this side only sends named numpy arrays and reads named results.
"""

from __future__ import annotations

from urllib.parse import urlparse

import numpy as np

from runtime.errors import CoordGANError
from runtime.backends.base import Backend, TensorSpec

_TRITON_TYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8,
                 "INT8": np.int8, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}
SCHEMES = ("triton", "triton+grpc", "triton+http")


def parse_url(url: str) -> tuple[str, str, str, str]:
    """'triton+http://h:8000/model@2' -> (protocol, 'h:8000', model, version)."""
    parts = urlparse(url)
    if parts.scheme not in SCHEMES or not parts.netloc or not parts.path.strip("/"):
        raise CoordGANError(f"{url!r} is not a Triton address; write triton://host:port/model "
                            "(or triton+http://... for HTTP).")
    protocol = "http" if parts.scheme == "triton+http" else "grpc"
    model, _, version = parts.path.strip("/").partition("@")
    return protocol, parts.netloc, model, version


class TritonBackend(Backend):
    name = "triton"

    def __init__(self, url: str, timeout_s: float = 30.0):
        protocol, self.host, self.model, self.version = parse_url(url)
        try:
            if protocol == "http":
                import tritonclient.http as client
            else:
                import tritonclient.grpc as client
        except ImportError:
            raise CoordGANError("The triton backend needs tritonclient; install it with: "
                                "pip install 'coordgan-deploy[runtime]'.") from None
        self.client_mod = client
        self.protocol = protocol
        self.timeout_s = timeout_s
        try:
            self.client = client.InferenceServerClient(self.host)
            ready = self.client.is_model_ready(self.model, self.version)
        except Exception as exc:
            raise CoordGANError(f"Cannot reach a Triton server at {self.host} ({protocol}): "
                                f"{str(exc).splitlines()[0][:160]}.") from None
        if not ready:
            raise CoordGANError(f"Triton at {self.host} has no ready model {self.model!r}.")
        meta = self.client.get_model_metadata(self.model, self.version)
        if protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            meta = MessageToDict(meta, preserving_proto_field_name=True)
        self.device = f"triton {self.host}"
        self.inputs = [self._spec(t) for t in meta.get("inputs", [])]
        self.outputs = [self._spec(t) for t in meta.get("outputs", [])]

    @staticmethod
    def _spec(tensor: dict) -> TensorSpec:
        shape = tuple(None if int(d) < 0 else int(d) for d in tensor.get("shape", []))
        return TensorSpec(tensor["name"], shape, np.dtype(_TRITON_TYPES.get(tensor["datatype"], np.float32)))

    def _run(self, feeds):
        client = self.client_mod
        inputs = []
        for name, value in feeds.items():
            dtype = next(k for k, v in _TRITON_TYPES.items() if np.dtype(v) == value.dtype)
            item = client.InferInput(name, list(value.shape), dtype)
            item.set_data_from_numpy(value)
            inputs.append(item)
        outputs = [client.InferRequestedOutput(spec.name) for spec in self.outputs]
        try:
            result = self.client.infer(self.model, inputs, model_version=self.version, outputs=outputs)
        except Exception as exc:
            raise CoordGANError(f"Triton model {self.model!r} failed: {str(exc).splitlines()[0][:200]}.") from None
        return {spec.name: result.as_numpy(spec.name) for spec in self.outputs}

    def close(self):
        try:
            self.client.close()
        except Exception:
            pass
