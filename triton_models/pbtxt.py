"""config.pbtxt text for Triton's ModelConfig protobuf, written by hand.

Plain string building, so writing a repository needs neither protobuf nor tritonclient; the tests
parse every file with tritonclient's ModelConfig to keep the text honest.
"""

from __future__ import annotations

import json

from runtime.errors import CoordGANError

# numpy / manifest dtype names -> Triton's DataType enum
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
              "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
              "bool": "TYPE_BOOL"}
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU", "auto": "KIND_AUTO"}


def data_type(dtype: str) -> str:
    try:
        return DATA_TYPES[dtype]
    except KeyError:
        raise CoordGANError(f"Triton has no data type for {dtype!r}.") from None


def triton_dims(shape: list) -> list[int]:
    """An I/O spec's shape without its batch axis (Triton adds it when max_batch_size > 0); symbolic -> -1."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape[1:]]


def tensor(spec: dict) -> str:
    """One input/output entry from an I/O spec {"name", "shape" (batch first), "dtype"}."""
    dims = ", ".join(str(d) for d in triton_dims(spec["shape"]))
    return f'{{ name: "{spec["name"]}" data_type: {data_type(spec["dtype"])} dims: [ {dims} ] }}'


def _block(key: str, entries: list[str]) -> str:
    return f"{key} [\n" + ",\n".join(f"  {e}" for e in entries) + "\n]"


def _string(value) -> str:
    return json.dumps(str(value), ensure_ascii=False)  # quotes and backslashes escaped as protobuf text wants


def model_config(name: str, *, inputs: list[dict], outputs: list[dict], max_batch: int,
                 platform: str | None = None, backend: str | None = None,
                 dynamic_batching: tuple[tuple[int, ...], int] | None = None,
                 instances: tuple[str, int] | None = None, parameters: dict | None = None,
                 extra: str = "", comment: str = "") -> str:
    """A model's config.pbtxt. dynamic_batching: (preferred sizes, queue delay in us) or None (off);
    instances: (kind: cpu|gpu|auto, count) or None (ensembles have none)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines.append(f"name: {_string(name)}")
    if platform:
        lines.append(f"platform: {_string(platform)}")
    if backend:
        lines.append(f"backend: {_string(backend)}")
    lines.append(f"max_batch_size: {max_batch}")
    lines.append(_block("input", [tensor(s) for s in inputs]))
    lines.append(_block("output", [tensor(s) for s in outputs]))
    if instances:
        kind, count = instances
        lines.append(f"instance_group [ {{ kind: {KINDS[kind]} count: {count} }} ]")
    if dynamic_batching:
        preferred, delay_us = dynamic_batching
        sizes = ", ".join(str(s) for s in preferred)
        lines.append(f"dynamic_batching {{\n  preferred_batch_size: [ {sizes} ]\n"
                     f"  max_queue_delay_microseconds: {delay_us}\n}}")
    for key, value in (parameters or {}).items():
        lines.append(f"parameters {{ key: {_string(key)} value: {{ string_value: {_string(value)} }} }}")
    if extra:
        lines.append(extra.rstrip())
    return "\n".join(lines) + "\n"


def ensemble_step(model: str, input_map: dict[str, str], output_map: dict[str, str]) -> str:
    """One ensemble_scheduling step: maps are {the model's tensor: the ensemble's tensor}."""
    maps = [f"input_map {{ key: {_string(k)} value: {_string(v)} }}" for k, v in input_map.items()]
    maps += [f"output_map {{ key: {_string(k)} value: {_string(v)} }}" for k, v in output_map.items()]
    body = "\n".join(f"      {m}" for m in maps)
    return f"    {{\n      model_name: {_string(model)}\n      model_version: -1\n{body}\n    }}"


def ensemble_scheduling(steps: list[str]) -> str:
    return "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}"
