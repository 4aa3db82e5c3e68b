"""coordgan_video on a real tritonserver: a video sent frame by frame gives `coordgan propagate`'s masks.

The repository is the one `coordgan triton build --backend python` writes (triton_models.repository),
from a tiny encoder export; the expected masks come from propagate_sequence with the same ONNX
encoder on the local runtime (ONNX Runtime). One server for the module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

from coordgan.data.synthetic_faces import make_sequence
from export_helpers import export_tiny
from runtime.errors import CoordGANError
from runtime.io.masks import read_mask
from runtime.lookup.spec import LookupParams
from runtime.propagation.model import CorrespondenceModel
from runtime.propagation.sequence import PropagateOptions, Reference, propagate_sequence
from runtime.propagation.step import Propagator
from triton_helpers import needs_tritonserver, start_server
from triton_models.models import video as video_model

VIDEO = "coordgan_video"
T, SIZE, MEMORY = 6, 48, 2
NEW_LABEL = 9  # only in the second annotation: the served model meets it mid-sequence


def _parse(text: str):
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _enum(message, field: str) -> str:
    """An enum field's name (TYPE_UINT8, KIND_CPU), not its number."""
    return message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[getattr(message, field)].name


@dataclass
class Video:
    frames: np.ndarray  # (T, H, W, 3) uint8
    refs: dict  # frame index -> label mask (any resolution of the frame's aspect ratio)
    expected: list  # propagate_sequence's mask of every frame


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny encoder export (float input), as `coordgan export onnx --only encoder` writes it."""
    return export_tiny(tmp_path_factory.mktemp("video-export"), only="encoder")


@pytest.fixture(scope="module")
def videos(exported, tmp_path_factory):
    """Two synthetic-face videos with multi-part masks and the masks propagate_sequence gives them."""
    frames_a, masks_a = make_sequence(T, SIZE, seed=3)
    second = masks_a[3].copy()
    second[(second > 0) & (np.arange(SIZE)[None, :] < SIZE // 3)] = NEW_LABEL  # a new part, left third
    second = np.asarray(Image.fromarray(second).resize((SIZE // 2, SIZE // 2), Image.NEAREST))  # low-res
    frames_b, masks_b = make_sequence(T, SIZE, seed=8)
    frames_b, masks_b = frames_b[:, :, 6:42].copy(), masks_b[:, :, 6:42].copy()  # not square
    out = tmp_path_factory.mktemp("video-local")
    result = {}
    with CorrespondenceModel(exported / "encoder.onnx") as model:
        for key, frames, refs in (("a", frames_a, {0: masks_a[0], 3: second}), ("b", frames_b, {0: masks_b[0]})):
            propagate_sequence(model, frames, [Reference(m, frame=i) for i, m in refs.items()], out / key,
                               PropagateOptions(batch=4, memory=MEMORY))
            expected = [read_mask(out / key / f"{t:05d}.png")[0] for t in range(T)]
            result[key] = Video(frames, refs, expected)
    assert len(np.unique(masks_a[0])) >= 4, "the first mask should have several parts"
    assert (result["a"].expected[3] == NEW_LABEL).any()  # the annotated frame's mask is its annotation
    return result


def _repository(exported, root, **options):
    """The repository `coordgan triton build --backend python` writes."""
    from triton_models.repository import BuildOptions, build_repository

    return build_repository(exported, root / "repo", BuildOptions(backend="python", memory=MEMORY, **options)).repo


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    with start_server(_repository(exported, tmp_path_factory.mktemp("video-repo"))) as running:
        yield running


def _client(server):
    import tritonclient.grpc as grpc

    return grpc.InferenceServerClient(server.grpc_url)


def send(client, corrid: int, frame, ref=None, *, start=False, end=False) -> np.ndarray:
    import tritonclient.grpc as grpc

    inputs = []
    for name, value in (("FRAME", frame), ("REF_MASK", ref)):
        if value is not None:
            inputs.append(grpc.InferInput(name, list(value.shape), "UINT8"))
            inputs[-1].set_data_from_numpy(np.ascontiguousarray(value, np.uint8))
    result = client.infer(VIDEO, inputs, sequence_id=corrid, sequence_start=start, sequence_end=end)
    return result.as_numpy("MASK")


def send_frame(client, corrid: int, video: Video, t: int) -> np.ndarray:
    return send(client, corrid, video.frames[t], video.refs.get(t), start=t == 0, end=t == T - 1)


def assert_masks_equal(got, video: Video, what: str):
    for t, (mask, want) in enumerate(zip(got, video.expected)):
        assert mask.dtype == np.uint8 and mask.shape == want.shape, (what, t, mask.dtype, mask.shape)
        assert np.array_equal(mask, want), f"{what}: frame {t} differs in {(mask != want).sum()} pixels"


# ---------------------------------------------------------------- no server needed


def test_config_parses_as_model_config():
    cfg = _parse(video_model.config(memory=2, tau=0.02, topk=7, idle_us=5_000_000, instances=2))
    assert (cfg.name, cfg.backend, cfg.max_batch_size) == (VIDEO, "python", 0)
    assert [(i.name, list(i.dims), i.optional) for i in cfg.input] == [("FRAME", [-1, -1, 3], False),
                                                                       ("REF_MASK", [-1, -1], True)]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("MASK", [-1, -1])]
    assert {_enum(i, "data_type") for i in [*cfg.input, *cfg.output]} == {"TYPE_UINT8"}
    seq = cfg.sequence_batching
    assert seq.max_sequence_idle_microseconds == 5_000_000 and seq.oldest.max_candidate_sequences >= 2
    controls = {c.name: c.control[0] for c in seq.control_input}
    assert list(controls["START"].int32_false_true) == [0, 1] and list(controls["END"].int32_false_true) == [0, 1]
    assert _enum(controls["CORRID"], "data_type") == "TYPE_UINT64"
    assert (_enum(cfg.instance_group[0], "kind"), cfg.instance_group[0].count) == ("KIND_CPU", 2)
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {
        "encoder_model": "coordgan_encoder", "memory": "2", "tau": "0.02", "topk": "7"}
    assert _parse(video_model.config(topk=None)).parameters["topk"].string_value == "0"  # 0: all pixels
    with pytest.raises(CoordGANError):
        video_model.config(tau=0)


def test_a_label_learnt_mid_sequence_changes_nothing_else():
    """The served model meets a later annotation's labels only then; its memory gains zero channels,
    which must equal knowing every label from the start (as propagate does)."""
    rng = np.random.default_rng(0)
    g = np.linspace(-1, 1, 16, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g, indexing="xy"))
    maps = [np.clip(grid + rng.normal(0, 0.05, grid.shape).astype(np.float32), -1, 1) for _ in range(6)]
    first = np.zeros((24, 24), np.uint8)
    first[4:12, 4:14], first[14:20, 6:20] = 3, 200
    later = first.copy()
    later[2:8, 16:22] = 7  # a label the first mask lacks, below 200: channels shift
    runs = [Propagator(LookupParams(memory=1), impl="sparse", labels=[0, 3, 7, 200]),
            Propagator(LookupParams(memory=1), impl="sparse")]
    masks = []
    for step in runs:
        step.annotate("0", maps[0], first)
        out = [step.propagate(str(t), maps[t], (24, 24))[0] for t in (1, 2)]
        step.annotate("3", maps[3], later)
        masks.append(out + [step.propagate(str(t), maps[t], (24, 24))[0] for t in (4, 5)])
    assert list(runs[1].labels.values) == [0, 3, 7, 200]
    for known, learnt in zip(*masks):
        assert np.array_equal(known, learnt)
    assert {7, 200} <= set(np.unique(masks[1][-1]).tolist())
    memories = [step.memory.entries() for step in runs]
    assert [e[0] for e in memories[0]] == [e[0] for e in memories[1]] == ["0", "3", "5"]
    for (_, corr_a, probs_a), (_, corr_b, probs_b) in zip(*memories):
        assert np.array_equal(corr_a, corr_b) and probs_a.shape == probs_b.shape == (4, 16, 16)
        np.testing.assert_allclose(probs_a, probs_b, atol=1e-6)


# ---------------------------------------------------------------- against a real tritonserver


@needs_tritonserver
def test_a_video_gives_the_masks_of_propagate(server, videos):
    client = _client(server)
    a = videos["a"]
    masks = [send_frame(client, 11, a, t) for t in range(T)]
    assert_masks_equal(masks, a, "video a")


@needs_tritonserver
def test_interleaved_sequences_stay_independent(server, videos):
    client = _client(server)
    got = {"a": [], "b": []}
    for t in range(T):
        for corrid, key in ((21, "a"), (22, "b")):
            got[key].append(send_frame(client, corrid, videos[key], t))
    assert_masks_equal(got["a"], videos["a"], "video a interleaved")
    assert_masks_equal(got["b"], videos["b"], "video b interleaved")


@needs_tritonserver
def test_bad_requests_fail_alone(server, videos):
    from tritonclient.utils import InferenceServerException

    client = _client(server)
    a = videos["a"]
    masks = [send_frame(client, 31, a, 0)]
    with pytest.raises(InferenceServerException, match="START"):  # unknown sequence id, no START
        send(client, 999, a.frames[1])
    with pytest.raises(InferenceServerException, match="needs REF_MASK"):
        send(client, 32, a.frames[0], start=True)
    with pytest.raises(InferenceServerException, match="no state"):  # Triton runs it; the model has nothing
        send(client, 32, a.frames[1], end=True)
    with pytest.raises(InferenceServerException, match="same size"):
        send(client, 31, a.frames[1, :40])
    with pytest.raises(InferenceServerException, match="aspect ratio"):
        send(client, 31, a.frames[1], np.zeros((10, 30), np.uint8))
    masks += [send_frame(client, 31, a, t) for t in range(1, T)]  # the failures changed nothing
    assert_masks_equal(masks, a, "video a after bad requests")
    assert server.alive()


@needs_tritonserver
def test_idle_sequences_are_released_and_dropped(exported, videos, tmp_path):
    from tritonclient.utils import InferenceServerException

    a = videos["a"]
    with start_server(_repository(exported, tmp_path, video_idle_s=1.0)) as short:
        client = _client(short)
        send(client, 51, a.frames[0], a.refs[0], start=True)
        time.sleep(2.5)
        send(client, 52, a.frames[0], a.refs[0], start=True)  # the model looks for idle states on any request
        with pytest.raises(InferenceServerException, match="START"):  # Triton has released the slot
            send(client, 51, a.frames[1])
        deadline = time.monotonic() + 10
        while "dropped sequence 51" not in short.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "dropped sequence 51" in short.log_text()
        assert "dropped sequence 52" not in short.log_text()
