"""One model on a Triton server, as the load test sees it: its config (inputs, batching), clients of
its own for each load thread, the server's statistics, and random inputs shaped from the config."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.backends.triton_backend import client_module, parse_address
from runtime.errors import CoordGANError, first_line

_DTYPES = {"TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16, "TYPE_UINT32": np.uint32,
           "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8, "TYPE_INT16": np.int16, "TYPE_INT32": np.int32,
           "TYPE_INT64": np.int64, "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64}
_STAT_TIMES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class InputSpec:
    name: str
    datatype: str  # Triton's wire name: FP32, UINT8, ...
    dtype: np.dtype
    dims: tuple[int, ...]  # without the batch dimension; -1 where variable


class TritonTarget:
    """One model on one server: its config (inputs, batching), new clients for the load threads, statistics."""

    def __init__(self, url: str, model: str | None = None, protocol: str | None = None):
        self.protocol, self.host, url_model, url_version = parse_address(url, protocol)
        if model and url_model and model != url_model:
            raise CoordGANError(f"--model {model!r} disagrees with the model {url_model!r} in --url.")
        self.model = model or url_model
        self.version = url_version
        if not self.model:
            raise CoordGANError("Give the model to load: --model NAME (e.g. coordgan_encoder).")
        self.module = client_module(self.protocol)
        self.client = self.new_client(timeout_s=10.0)
        try:
            self._load_config()
        except BaseException:
            self.close()  # an open HTTP connection would hold the server's shutdown for its 30 s grace
            raise

    def _load_config(self) -> None:
        try:
            self.client.is_server_live()
            self.server_version = self.client.get_server_metadata(**self._json).get("version")
        except Exception as exc:
            raise CoordGANError(f"Cannot reach a Triton server at {self.host} ({self.protocol}): "
                                f"{first_line(exc)}.") from None
        self.config = self._model_config()
        self.max_batch_size = int(self.config.get("max_batch_size", 0))
        self.inputs = [self._input(t) for t in self.config.get("input", [])]
        self.outputs = [t["name"] for t in self.config.get("output", [])]
        if "sequence_batching" in self.config:
            raise CoordGANError(f"{self.model} is a stateful sequence model (sequence_batching): its requests need "
                                "correlation ids and START/END flags, so this load test of independent requests "
                                "cannot drive it.")
        if self.config.get("model_transaction_policy", {}).get("decoupled"):
            raise CoordGANError(f"{self.model} is a decoupled model; this load test needs one response per request.")

    @property
    def _json(self) -> dict:
        return {"as_json": True} if self.protocol == "grpc" else {}

    def new_client(self, timeout_s: float | None = None):
        """A client of its own (HTTP clients are gevent-based: create and use each in one thread)."""
        timeout = timeout_s or 300.0
        if self.protocol == "http":
            return self.module.InferenceServerClient(self.host, connection_timeout=timeout, network_timeout=timeout)
        return self.module.InferenceServerClient(self.host)

    def _model_config(self) -> dict:
        try:
            ready = self.client.is_model_ready(self.model, self.version)
        except Exception as exc:
            raise CoordGANError(f"Triton at {self.host} did not answer about model {self.model!r}: "
                                f"{first_line(exc)}.") from None
        if not ready:
            try:
                index = self.client.get_model_repository_index(**self._json)
                index = index.get("models", []) if isinstance(index, dict) else index
                names = sorted({m["name"] for m in index if m.get("state") == "READY"})
            except Exception:
                names = []
            served = f"; it serves: {', '.join(names)}" if names else ""
            raise CoordGANError(f"Triton at {self.host} has no ready model {self.model!r}{served}.")
        config = self.client.get_model_config(self.model, self.version, **self._json)
        return config.get("config", config) if self.protocol == "grpc" else config

    def _input(self, tensor: dict) -> InputSpec:
        kind = tensor.get("data_type", "TYPE_FP32")
        if kind not in _DTYPES:
            raise CoordGANError(f"Input {tensor['name']!r} of {self.model} is {kind}; the load test makes "
                                "random numeric inputs only.")
        dims = tuple(int(d) for d in tensor.get("dims", []))  # gRPC's JSON writes int64 as strings
        return InputSpec(tensor["name"], kind[len("TYPE_"):], np.dtype(_DTYPES[kind]), dims)

    def describe_batching(self) -> str:
        """e.g. 'dynamic batching (preferred 4,8; queue delay 500 us), max batch 8, 2 CPU instances'."""
        parts = []
        dyn = self.config.get("dynamic_batching")
        if dyn is None:
            parts.append("no dynamic batching")
        else:
            preferred = ",".join(str(int(b)) for b in dyn.get("preferred_batch_size", [])) or "-"
            parts.append(f"dynamic batching (preferred {preferred}; queue delay "
                         f"{int(dyn.get('max_queue_delay_microseconds', 0))} us)")
        parts.append(f"max batch {self.max_batch_size}")
        groups = self.config.get("instance_group", [])
        count = sum(int(g.get("count", 1)) for g in groups) or 1
        kinds = sorted({g.get("kind", "KIND_AUTO").replace("KIND_", "") for g in groups}) or ["AUTO"]
        parts.append(f"{count} {'/'.join(kinds)} instance{'s' if count > 1 else ''}")
        return ", ".join(parts)

    def statistics(self) -> dict:
        """Totals over the model's versions: counts and per-phase (count, ns), as ints."""
        raw = self.client.get_inference_statistics(self.model, self.version, **self._json)
        totals = {"inference_count": 0, "execution_count": 0, **{k: [0, 0] for k in _STAT_TIMES}}
        for entry in raw.get("model_stats", []):
            totals["inference_count"] += int(entry.get("inference_count", 0))
            totals["execution_count"] += int(entry.get("execution_count", 0))
            for key in _STAT_TIMES:
                stat = entry.get("inference_stats", {}).get(key, {})
                totals[key][0] += int(stat.get("count", 0))
                totals[key][1] += int(stat.get("ns", 0))
        return totals

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass


def random_inputs(target: TritonTarget, batch: int, shapes: dict, rng: np.random.Generator) -> dict:
    """name -> array of one request: floats in [0, 1) (valid images, coordinates and label probabilities
    alike), uint8 0-255 (frames), small ints."""
    if target.max_batch_size == 0 and batch != 1:
        raise CoordGANError(f"{target.model} does not batch (max_batch_size 0); use --batch 1.")
    if batch > max(target.max_batch_size, 1):
        raise CoordGANError(f"--batch {batch} exceeds {target.model}'s max_batch_size {target.max_batch_size}.")
    unknown = sorted(set(shapes) - {spec.name for spec in target.inputs})
    if unknown:
        raise CoordGANError(f"--shape names {unknown[0]!r}, which is not an input of {target.model} "
                            f"(inputs: {', '.join(s.name for s in target.inputs)}).")
    feeds = {}
    for spec in target.inputs:
        dims = tuple(shapes.get(spec.name, spec.dims))
        if len(dims) != len(spec.dims) or any(d != c for d, c in zip(dims, spec.dims) if c >= 0):
            raise CoordGANError(f"--shape {spec.name}:{','.join(map(str, dims))} does not fit its config dims "
                                f"{list(spec.dims)}.")
        if any(d < 1 for d in dims):
            raise CoordGANError(f"Input {spec.name!r} of {target.model} has variable dims {list(spec.dims)}; give "
                                f"them with --shape {spec.name}:" + ",".join("N" if d < 0 else str(d) for d in dims)
                                + ".")
        shape = ((batch,) if target.max_batch_size > 0 else ()) + dims
        if spec.dtype.kind == "f":
            value = rng.random(shape)
        elif spec.dtype == np.uint8:
            value = rng.integers(0, 256, shape)
        elif spec.dtype.kind == "b":
            value = rng.integers(0, 2, shape)
        else:
            value = rng.integers(0, 8, shape)
        feeds[spec.name] = (spec.datatype, np.ascontiguousarray(value.astype(spec.dtype)))
    return feeds
