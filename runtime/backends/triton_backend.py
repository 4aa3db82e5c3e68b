"""Triton backend: a model on a Triton Inference Server, through tritonclient (gRPC or HTTP).

Addresses (parse_address, the one reading of them): `triton://host:port/model` (gRPC),
`triton+grpc://...`, `triton+http://...`, `grpc://`, `http://`, or `host:port/model`; an optional
`@version` after the model name. The server scales the work over its GPUs and
instances; this side only sends named numpy arrays and reads named results.
"""

from __future__ import annotations

from urllib.parse import urlparse

import numpy as np

from runtime.backends.base import Backend, TensorSpec
from runtime.errors import CoordGANError, first_line

_TRITON_TYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8,
                 "INT8": np.int8, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}
# scheme -> protocol; an address without a scheme (HOST:PORT) takes the caller's, else gRPC
SCHEMES = {"triton": "grpc", "triton+grpc": "grpc", "grpc": "grpc", "triton+http": "http", "http": "http"}
PROTOCOLS = ("grpc", "http")


def parse_address(url: str, protocol: str | None = None) -> tuple[str, str, str, str]:
    """The one reading of a Triton address, for every command that takes one.

    'HOST:PORT', 'triton://h:p' (gRPC), 'triton+http://h:p/model@2', 'grpc://h:p', 'http://h:p/model'
    -> (protocol, 'h:p', model or '', version or ''). `protocol` (grpc | http) must agree with the
    scheme's; a plain HOST:PORT takes it (default gRPC).
    """
    text = str(url).strip()
    parts = urlparse(text if "://" in text else "none://" + text)
    try:
        port = parts.port
    except ValueError:  # a port that is not a number
        port = None
    if parts.scheme not in (*SCHEMES, "none") or not parts.hostname or port is None:
        raise CoordGANError(f"{url!r} is not a Triton server address; write HOST:PORT or triton://host:port[/model] "
                            "(triton+http://... for HTTP).")
    if protocol is not None and protocol not in PROTOCOLS:
        raise CoordGANError(f"--protocol must be grpc or http, not {protocol!r}.")
    implied = SCHEMES.get(parts.scheme)
    if protocol and implied and protocol != implied:
        raise CoordGANError(f"{url!r} is a {implied} address but --protocol says {protocol}.")
    model, _, version = parts.path.strip("/").partition("@")
    return protocol or implied or "grpc", parts.netloc, model, version


def is_address(text: str) -> bool:
    """True for an address with a Triton scheme (triton://, triton+http://, grpc://, http://...)."""
    return "://" in str(text) and str(text).split("://", 1)[0] in SCHEMES


def client_module(protocol: str):
    """tritonclient.grpc or tritonclient.http, or one sentence saying how to install it."""
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError:
        raise CoordGANError(f"Talking to Triton needs tritonclient[{protocol}]; install it with: "
                            "pip install 'coordgan-deploy[runtime]'.") from None
    return module


class TritonBackend(Backend):
    name = "triton"

    def __init__(self, url: str, model: str | None = None, timeout_s: float = 30.0):
        """url: a Triton address (parse_address); model: the model when the address names none."""
        protocol, self.host, url_model, self.version = parse_address(url)
        self.model = url_model or model
        if not self.model:
            raise CoordGANError(f"{url!r} names no model; write triton://host:port/model (or triton+http://...).")
        client = client_module(protocol)
        self.client_mod = client
        self.protocol = protocol
        self.timeout_s = timeout_s
        try:
            self.client = client.InferenceServerClient(self.host)
            ready = self.client.is_model_ready(self.model, self.version)
        except Exception as exc:
            raise CoordGANError(f"Cannot reach a Triton server at {self.host} ({protocol}): "
                                f"{first_line(exc)}.") from None
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
            raise CoordGANError(f"Triton model {self.model!r} failed: {first_line(exc)}.") from None
        return {spec.name: result.as_numpy(spec.name) for spec in self.outputs}

    def close(self):
        try:
            self.client.close()
        except Exception:
            pass
