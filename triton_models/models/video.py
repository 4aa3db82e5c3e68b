"""coordgan_video: mask propagation through a video as a stateful Triton sequence model (python backend).

A client sends a video one frame per request, all under one correlation id:
    START request: FRAME (H, W, 3) uint8 + REF_MASK (h, w) uint8 labels -> MASK = that mask at frame size
    each next one: FRAME, optionally REF_MASK (another annotated frame)  -> MASK (H, W) uint8 label values
    END (on the last request) drops the sequence's state.
Each frame takes one step of runtime.propagation.step.Propagator, the step `coordgan propagate` runs,
with the encoder model (parameter encoder_model, whatever its backend) called through BLS behind a
runtime Backend, so CorrespondenceModel's preprocessing and the runtime's lookup (CUDA kernel where
it runs, else CPU) are the ones propagate uses: a video gives the masks propagate writes for it.

State lives in the instance, one Propagator per correlation id; Triton routes every request of a
sequence to the same instance. The sequence batcher uses the "oldest" strategy so that one
instance keeps `sequences` videos active at once (the default "direct" strategy gives a model
without batching a single slot: a second video would wait for the first to end). Triton frees a
slot idle longer than max_sequence_idle_microseconds without telling the model, so the model drops
states idle that long itself. Errors (a request without a START state, a START without REF_MASK,
a frame whose size differs from the reference frame's, a mask of another aspect ratio) fail that
request alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from runtime.backends.base import Backend, TensorSpec
from runtime.errors import CoordGANError
from runtime.io.masks import resize_mask
from runtime.lookup.spec import LookupParams
from runtime.propagation.model import CorrespondenceModel
from runtime.propagation.step import Propagator

# shared with the other python-backend models: the stub's utils, error text, dlpack log-noise filter
from triton_models.models.base import error_message, pb_utils_module, quiet_used_capsules

DEFAULT_IDLE_US = 1_000_000  # Triton's own default when the config leaves it 0


def config(*, name: str = "coordgan_video", encoder_model: str = "coordgan_encoder", memory: int = 3,
           tau: float = 0.01, topk: int | None = None, idle_us: int = 60_000_000, instances: int = 1,
           sequences: int = 16) -> str:
    """config.pbtxt of the video model. sequences: videos one instance keeps active at once (more wait)."""
    LookupParams.with_topk(memory=memory, tau=tau, topk=topk)
    if idle_us < 1 or instances < 1 or sequences < 1:
        raise CoordGANError(f"The video model needs a positive idle time, instance count and sequence count; got "
                            f"{idle_us} us, {instances}, {sequences}.")
    parameters = {"encoder_model": encoder_model, "memory": int(memory), "tau": repr(float(tau)),
                  "topk": int(topk or 0)}  # topk 0: every reference pixel
    params = "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(str(v))} }} }}'
                       for k, v in parameters.items())
    flag = "int32_false_true: [ 0, 1 ]"
    return f"""\
# Stateful video mask propagation: START = reference frame + REF_MASK, then one frame per request.
# Written by `coordgan triton build`; its code is triton_models/models/video.py.
name: {json.dumps(name)}
backend: "python"
max_batch_size: 0
input [
  {{ name: "FRAME" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }},
  {{ name: "REF_MASK" data_type: TYPE_UINT8 dims: [ -1, -1 ] optional: true }}
]
output [
  {{ name: "MASK" data_type: TYPE_UINT8 dims: [ -1, -1 ] }}
]
sequence_batching {{
  max_sequence_idle_microseconds: {int(idle_us)}
  oldest {{ max_candidate_sequences: {int(sequences)} }}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START {flag} }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END {flag} }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
}}
instance_group [ {{ kind: KIND_CPU count: {int(instances)} }} ]
{params}
"""


def read_specs(config_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of a model from its config.pbtxt (BLS has no metadata call; batch axis first)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from triton_models.pbtxt import DATA_TYPES

    to_numpy = {triton: np.dtype(name) for name, triton in DATA_TYPES.items() if name != "bfloat16"}
    try:
        cfg = text_format.Parse(Path(config_path).read_text(), mc.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise CoordGANError(f"Cannot read the encoder's config {config_path} ({exc}).") from None
    batch = (None,) if cfg.max_batch_size > 0 else ()

    def spec(t):
        return TensorSpec(t.name, batch + tuple(None if d < 0 else int(d) for d in t.dims),
                          to_numpy.get(mc.DataType.Name(t.data_type), np.dtype(np.float32)))

    return [spec(t) for t in cfg.input], [spec(t) for t in cfg.output]


class BlsBackend(Backend):
    """Another model of this Triton server, called through BLS: a runtime Backend inside a python model.

    Only `outputs` are requested (the encoder's corr_map, not its codes); results come back in CPU memory."""

    name = "triton-bls"

    def __init__(self, model: str, config_path: Path, outputs: tuple[str, ...] | None = None):
        self.model = model
        self.inputs, all_outputs = read_specs(config_path)
        self.outputs = [s for s in all_outputs if outputs is None or s.name in outputs]
        self.device = f"triton model {model}"

    def _run(self, feeds):
        pb_utils = pb_utils_module()
        request = pb_utils.InferenceRequest(
            model_name=self.model, requested_output_names=[s.name for s in self.outputs],
            inputs=[pb_utils.Tensor.from_dlpack(k, np.ascontiguousarray(v)) for k, v in feeds.items()],
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0))
        response = request.exec()
        if response.has_error():
            raise CoordGANError(f"The {self.model} model failed: {response.error().message()}")
        # copies: the response's buffers are freed with it
        return {t.name(): np.from_dlpack(t).copy() for t in response.output_tensors()}


class _Video:
    """One sequence: its propagation step, frame size and count, and when it was last used."""

    def __init__(self, corrid: int, params: LookupParams, model: CorrespondenceModel):
        self.corrid, self.model = corrid, model
        self.step = Propagator(params)
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.used = time.monotonic()

    def advance(self, frame: np.ndarray, ref: np.ndarray | None) -> np.ndarray:
        """The frame's mask: the reference resized to the frame (annotated frame), else propagated."""
        size = tuple(frame.shape[:2])
        if min(size) < 1:
            raise CoordGANError(f"FRAME of sequence {self.corrid} is empty ({size[1]}x{size[0]}).")
        if self.size is not None and size != self.size:
            raise CoordGANError(f"Frame {self.frames} of sequence {self.corrid} is {size[1]}x{size[0]}, but its "
                                f"reference frame was {self.size[1]}x{self.size[0]}: every frame of a video "
                                "must have the same size.")
        mask = None
        if ref is not None:  # checked before the encoder runs: a bad mask changes nothing
            if min(ref.shape) < 1:
                raise CoordGANError(f"REF_MASK of sequence {self.corrid} is empty.")
            mask = resize_mask(ref, size, what=f"REF_MASK of sequence {self.corrid}")
        corr = self.model.correspondence(frame[None])[0]
        name = str(self.frames)
        if mask is not None:
            self.step.annotate(name, corr, mask)
        else:
            mask, _ = self.step.propagate(name, corr, size)
        self.size = size
        self.frames += 1
        return mask


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        quiet_used_capsules()
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.params = LookupParams.with_topk(memory=int(params.get("memory", "3")), tau=float(params.get("tau", "0.01")),
                                             topk=int(params.get("topk", "0")) or None)
        idle_us = int(config.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 0) or 0)
        self.idle_s = (idle_us or DEFAULT_IDLE_US) / 1e6
        encoder = params.get("encoder_model", "coordgan_encoder")
        # model_repository is this model's folder; its siblings are the repository's other models
        config_path = Path(args["model_repository"]).parent / encoder / "config.pbtxt"
        self.model = CorrespondenceModel(BlsBackend(encoder, config_path, outputs=("corr_map",)))
        self.videos: dict[int, _Video] = {}

    def execute(self, requests):
        pb_utils = pb_utils_module()
        now = time.monotonic()
        for corrid in [c for c, v in self.videos.items() if now - v.used > self.idle_s]:
            del self.videos[corrid]  # Triton has released its slot already
            pb_utils.Logger.log_info(f"coordgan_video: dropped sequence {corrid}, idle over {self.idle_s:g} s")
        responses = []
        for request in requests:
            try:
                mask = self._handle(pb_utils, request)
                # a copy: a mask may be the REF_MASK input itself, read-only
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor.from_dlpack("MASK", np.array(mask, np.uint8))]))
            except Exception as exc:  # this request fails alone; the sequence and the others go on
                responses.append(pb_utils.InferenceResponse(output_tensors=[],
                                                            error=pb_utils.TritonError(error_message(exc))))
        return responses

    def _handle(self, pb_utils, request) -> np.ndarray:
        def read(name):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            return None if tensor is None else np.from_dlpack(tensor)

        start, end, corrid = bool(read("START")[0]), bool(read("END")[0]), int(read("CORRID")[0])
        frame, ref = read("FRAME"), read("REF_MASK")
        try:
            if start:
                self.videos.pop(corrid, None)  # a new START replaces the sequence
                if ref is None:
                    raise CoordGANError(f"The START request of sequence {corrid} needs REF_MASK, the label mask "
                                        "of its first frame.")
                video = _Video(corrid, self.params, self.model)
            else:
                video = self.videos.get(corrid)
                if video is None:
                    raise CoordGANError(f"Sequence {corrid} has no state: it never started here, its START "
                                        f"failed, or it was idle longer than {self.idle_s:g} s.")
            mask = video.advance(frame, ref)
            video.used = time.monotonic()
            self.videos[corrid] = video  # only a START that gave a mask begins a sequence
            return mask
        finally:
            if end:
                self.videos.pop(corrid, None)

    def finalize(self) -> None:
        self.videos.clear()
        self.model.close()
