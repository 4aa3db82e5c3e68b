"""The python-backend repository of `coordgan triton build` on a real tritonserver (CPU), through
tritonclient over HTTP and gRPC: outputs equal the local runtime's, concurrent clients all succeed,
malformed requests get errors while the server keeps serving. One server for the whole file.
"""

import contextlib
import importlib
import shutil
import threading

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from export_helpers import export_tiny
from runtime.backends.ort_backend import OrtBackend
from runtime.errors import CoordGANError
from runtime.lookup import lookup
from triton_helpers import needs_tritonserver, start_server
from triton_models.repository import BuildOptions, build_repository
from triton_models.server import TritonServer

pytestmark = needs_tritonserver
TRITON_TYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int32): "INT32",
                np.dtype(np.uint8): "UINT8"}
PROTOCOLS = ["http", "grpc"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton-served")
    exported = export_tiny(root)
    repo = build_repository(exported, root / "repo", BuildOptions(backend="python", video=False)).repo
    with start_server(repo) as server:
        yield server, exported


@pytest.fixture(scope="module")
def local(served):
    """The runtime's own backends on the same ONNX files: what the server must reproduce."""
    _, exported = served
    backends = {name: OrtBackend(exported / f"{name}.onnx", device="cpu") for name in ("encoder", "generator")}
    yield backends
    for backend in backends.values():
        backend.close()


@pytest.fixture(params=PROTOCOLS)
def client(served, request):
    """(tritonclient.http or .grpc, a client of the server), once per protocol."""
    with connect(served[0], request.param) as pair:
        yield pair


@contextlib.contextmanager
def connect(server, protocol, **options):
    """(client module, client); closed after, since an open connection holds up the server's shutdown."""
    module = importlib.import_module(f"tritonclient.{protocol}")
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url, **options)
    try:
        yield module, client
    finally:
        client.close()


def infer_inputs(module, feeds):
    inputs = []
    for name, value in feeds.items():
        item = module.InferInput(name, list(value.shape), TRITON_TYPES[value.dtype])
        item.set_data_from_numpy(value)
        inputs.append(item)
    return inputs


def infer(module, client, model, feeds, outputs):
    result = client.infer(model, infer_inputs(module, feeds))
    return {name: result.as_numpy(name) for name in outputs}


def images(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 32, 32)).astype(np.float32)


def memory(encoder, n, refs=2, classes=3, seed=1):
    """A reference memory from real encoder maps: ref_maps (n, R, 2, S, S), one-hot ref_probs (n, R, C, S, S)."""
    rng = np.random.default_rng(seed)
    maps = encoder.run({"image": images(n * refs, seed)})["corr_map"].reshape(n, refs, 2, 32, 32)
    labels = rng.integers(0, classes, (n, refs, 32, 32))
    probs = np.moveaxis(np.eye(classes, dtype=np.float32)[labels], -1, 2)
    return np.ascontiguousarray(maps), np.ascontiguousarray(probs)


def test_encoder_and_generator_equal_the_runtime(client, local):
    x = images(3)
    got = infer(*client, "coordgan_encoder", {"image": x}, ["corr_map", "w_struct", "w_texture"])
    want = local["encoder"].run({"image": x})
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=ATOL, rtol=0, err_msg=name)
    codes = {"w_struct": want["w_struct"], "w_texture": want["w_texture"]}
    got = infer(*client, "coordgan_generator", codes, ["image", "corr_map"])
    for name, value in local["generator"].run(codes).items():
        np.testing.assert_allclose(got[name], value, atol=ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("scheme", ["triton", "triton+http"])
def test_runtime_triton_backend_equals_local_onnx_runtime(served, scheme):
    """The runtime's own Triton backend (what `coordgan propagate --backend triton` uses): same
    correspondence maps and codes through the server as from ONNX Runtime in process."""
    from runtime.propagation.model import CorrespondenceModel

    server, exported = served
    address = server.grpc_url if scheme == "triton" else server.http_url
    frames = np.random.default_rng(3).integers(0, 256, (5, 40, 48, 3), dtype=np.uint8)
    with CorrespondenceModel(f"{scheme}://{address}/coordgan_encoder", batch=2) as remote, \
            CorrespondenceModel(exported / "encoder.onnx", backend="onnxruntime", batch=2) as here:
        got, want = remote.encode(frames), here.encode(frames)
    assert set(got) == set(want) == {"corr_map", "w_struct", "w_texture"}
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=ATOL, err_msg=name)


def test_lookup_and_frame_labels_equal_the_runtime(client, local):
    x = images(2, seed=5)
    ref_maps, ref_probs = memory(local["encoder"], 2)
    query = local["encoder"].run({"image": x})["corr_map"]
    want_probs, want_labels = lookup(query, ref_maps, ref_probs, tau=0.01, mode="soft", impl="sparse")
    assert len(np.unique(want_labels)) > 1  # the maps vary, so the comparison means something
    got = infer(*client, "coordgan_corr_lookup", {"query": query, "ref_maps": ref_maps, "ref_probs": ref_probs},
                ["probs", "labels"])
    np.testing.assert_allclose(got["probs"], want_probs, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(got["labels"], want_labels)
    got = infer(*client, "coordgan_frame_labels", {"image": x, "ref_maps": ref_maps, "ref_probs": ref_probs},
                ["probs", "labels"])
    np.testing.assert_allclose(got["probs"], want_probs, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(got["labels"], want_labels)


def test_concurrent_clients_all_succeed(served, local):
    """8 clients x 50 requests: every response is its own request's result, batched or not."""
    server = served[0]
    inputs = [images(1, seed=100 + i) for i in range(8)]
    expected = [local["encoder"].run({"image": x})["corr_map"] for x in inputs]
    before = _counts(server)
    failures = []

    def client_loop(i):
        try:
            with connect(server, "http") as (module, client):
                for _ in range(50):
                    got = infer(module, client, "coordgan_encoder", {"image": inputs[i]}, ["corr_map"])["corr_map"]
                    np.testing.assert_allclose(got, expected[i], atol=ATOL, rtol=0)
        except Exception as exc:  # reported below, with the client's number
            failures.append(f"client {i}: {exc}")

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    inferences, executions = (a - b for a, b in zip(_counts(server), before))
    assert inferences == 400
    assert executions < inferences  # the dynamic batcher merged requests, and the split was right


def _counts(server):
    with connect(server, "http") as (_, client):
        model = client.get_inference_statistics("coordgan_encoder")["model_stats"][0]
    return model["inference_count"], model["execution_count"]


def test_malformed_requests_get_errors_and_the_server_keeps_serving(client, local):
    with pytest.raises(InferenceServerException, match="data-type is .FP64., but model .coordgan_encoder. "
                                                       "expects .FP32."):
        infer(*client, "coordgan_encoder", {"image": images(1).astype(np.float64)}, ["corr_map"])
    with pytest.raises(InferenceServerException, match="unexpected shape for input .image."):
        infer(*client, "coordgan_encoder", {"image": images(1)[:, :, :16]}, ["corr_map"])
    ref_maps, ref_probs = memory(local["encoder"], 1)
    with pytest.raises(InferenceServerException, match="ref_probs must have shape"):  # the model's own check
        infer(*client, "coordgan_corr_lookup",
              {"query": ref_maps[:, 0], "ref_maps": ref_maps, "ref_probs": ref_probs[:, :1]}, ["labels"])
    got = infer(*client, "coordgan_encoder", {"image": images(1)}, ["corr_map"])["corr_map"]
    np.testing.assert_allclose(got, local["encoder"].run({"image": images(1)})["corr_map"], atol=ATOL, rtol=0)


def test_a_bad_request_in_a_batch_fails_alone(served, local):
    """Concurrent lookups, one with NaN in its query: it gets an error, the others their results."""
    ref_maps, ref_probs = memory(local["encoder"], 1)
    queries = [local["encoder"].run({"image": images(1, seed=20 + i)})["corr_map"] for i in range(6)]
    queries[2][0, 0, 3, 3] = np.nan
    with connect(served[0], "http", concurrency=len(queries)) as (http, client):
        pending = [client.async_infer("coordgan_corr_lookup", infer_inputs(
            http, {"query": q, "ref_maps": ref_maps, "ref_probs": ref_probs})) for q in queries]
        for i, (request, q) in enumerate(zip(pending, queries)):
            if i == 2:
                with pytest.raises(InferenceServerException, match="query contains NaN or Inf"):
                    request.get_result()
            else:
                want, _ = lookup(q, ref_maps, ref_probs, tau=0.01, impl="sparse")
                np.testing.assert_allclose(request.get_result().as_numpy("probs"), want, atol=ATOL, rtol=0)


def test_a_corrupt_model_fails_the_start_in_one_sentence_naming_it(served, tmp_path):
    """The model and the cause from the server's log, without the python backend's stack."""
    repo = shutil.copytree(served[0].repo, tmp_path / "repo")
    onnx = repo / "coordgan_encoder" / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:300])
    server = TritonServer(repo, http_port=0, grpc_port=0, log_path=tmp_path / "log")
    with pytest.raises(CoordGANError) as info:
        server.start(timeout_s=120)
    message = str(info.value)
    assert message.startswith("tritonserver exited during startup (code 1): model coordgan_encoder failed to load: "
                              f"ONNX Runtime cannot load {onnx}: "), message
    assert message.endswith(f"(log: {server.log_path}).") and server.log_path.is_file(), message
    assert "At:" not in message and "\\n" not in message and "\n" not in message, message
