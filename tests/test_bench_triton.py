"""`coordgan bench triton`: the closed-loop load test against a real tritonserver (python backend, CPU).

Two servers: the repository `coordgan triton build --backend python` writes from a tiny export
(the encoder under load, the lookup's variable dims, the video model's refusal), and small
python-backend echoes for the plumbing cases (failing model, duration bound, one-sentence
refusals). A few requests per level keep it fast.
"""

import json
import shutil

import pytest
from typer.testing import CliRunner

from coordgan.cli import app
from coordgan.config import PRESETS
from net_helpers import free_port
from runtime.backends.triton_backend import parse_address
from runtime.bench.triton_load import LoadOptions, run_load
from runtime.bench.triton_target import TritonTarget
from runtime.errors import CoordGANError
from triton_helpers import needs_tritonserver, start_server, write_echo_repo


def invoke(*args):
    return CliRunner().invoke(app, ["bench", *map(str, args)])


FAILING_MODEL = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError("model says no")) for _ in requests]
"""


def _variant(repo, name: str, dims: str, extra: str = "", source: str | None = None):
    """A copy of the echo model under another name, with other dims / scheduling (or another model.py)."""
    shutil.copytree(repo / "echo" / "1", repo / name / "1")
    if source is not None:
        (repo / name / "1" / "model.py").write_text(source)
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\n'
        f'input [ {{ name: "X" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n'
        f'output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n'
        f'instance_group [ {{ kind: KIND_CPU count: 1 }} ]\n{extra}\n')


@pytest.fixture(scope="module")
def coordgan_server(tmp_path_factory):
    """The python-backend repository of a tiny encoder export (random weights: timing only)."""
    pytest.importorskip("torch")
    from export_helpers import export_tiny
    from triton_models.repository import BuildOptions, build_repository

    root = tmp_path_factory.mktemp("bench-triton-export")
    export = export_tiny(root, only="encoder")
    repo = build_repository(export, root / "repo", BuildOptions(backend="python", max_batch=8)).repo
    with start_server(repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = write_echo_repo(tmp_path_factory.mktemp("bench-triton") / "repo")
    _variant(repo, "echo_var", "-1")
    _variant(repo, "echo_seq", "4", "sequence_batching { max_sequence_idle_microseconds: 5000000 }")
    _variant(repo, "failing", "4", source=FAILING_MODEL)
    with start_server(repo) as srv:
        yield srv


def test_addresses():
    assert parse_address("127.0.0.1:8001") == ("grpc", "127.0.0.1:8001", "", "")
    assert parse_address("h:8000", "http") == ("http", "h:8000", "", "")
    assert parse_address("triton://h:8001/coordgan_encoder") == ("grpc", "h:8001", "coordgan_encoder", "")
    assert parse_address("triton+http://h:8000/m@2") == ("http", "h:8000", "m", "2")
    for bad in ("h", "h:port", "ftp://h:1"):
        with pytest.raises(CoordGANError, match="not a Triton server address"):
            parse_address(bad)
    with pytest.raises(CoordGANError, match="grpc address but --protocol says http"):
        parse_address("triton://h:8001", "http")


@needs_tritonserver
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_levels_json_and_server_statistics(server, protocol, tmp_path):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    out = tmp_path / "t.json"
    result = invoke("triton", "--url", url, "--protocol", protocol, "--model", "echo", "--concurrency", "1,4",
                    "--batch", "1,3", "--requests", 12, "--warmup", 1, "--json", out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "exec batch" in result.output and "dynamic batching" in result.output
    data = json.loads(out.read_text())
    assert data["format"] == "coordgan-bench/1"
    meta = data["meta"]
    assert meta["target"] == "triton" and meta["model"] == "echo" and meta["protocol"] == protocol
    assert meta["server_version"] and "dynamic batching" in meta["batching"] and "command" in meta
    assert meta["options"]["concurrency"] == [1, 4] and meta["machine"]["cpus"] >= 1
    rows = data["rows"]
    assert [(r["batch"], r["concurrency"]) for r in rows] == [(1, 1), (1, 4), (3, 1), (3, 4)]
    for r in rows:
        assert r["status"] == "ok" and r["backend"] == f"triton-{protocol}" and r["target"] == "echo"
        assert r["requests"] == r["iters"] == 12 and r["errors"] == 0 and "reason" not in r
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["throughput"] == pytest.approx(12 * r["batch"] / r["wall_s"])
        # the server counted exactly the timed requests (warm-up is outside the delta)
        assert r["server_requests"] == 12 and r["server_failed"] == 0
        assert r["server_inferences"] == 12 * r["batch"]
        assert 1 <= r["server_executions"] <= 12
        assert r["batch"] <= r["server_avg_batch"] <= 8
        for key in ("server_queue_ms", "server_compute_input_ms", "server_compute_infer_ms",
                    "server_compute_output_ms", "server_request_ms"):
            assert r[key] is not None and r[key] >= 0, key
    # compare matches levels by concurrency too (a run against itself: every ratio 1)
    result = invoke("compare", out, out, "--json", tmp_path / "c.json")
    assert result.exit_code == 0, (result.output, result.exception)
    compared = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert sorted((r["backend"], r["batch"]) for r in compared) == sorted(
        (f"triton-{protocol} x{c}", b) for b in (1, 3) for c in (1, 4))
    assert all(r["throughput_ratio"] == pytest.approx(1.0) for r in compared)


@needs_tritonserver
def test_coordgan_repository_under_load(coordgan_server, tmp_path):
    size = PRESETS["tiny"].base_size
    out = tmp_path / "enc.json"
    result = invoke("triton", "--url", f"triton://{coordgan_server.grpc_url}/coordgan_encoder",
                    "--concurrency", "1,4", "--batch", "2", "--requests", 8, "--warmup", 1, "--json", out)
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(out.read_text())
    assert "dynamic batching (preferred 4,8" in data["meta"]["batching"]
    for r in data["rows"]:
        assert r["status"] == "ok" and r["requests"] == 8 and r["errors"] == 0
        assert r["server_requests"] == 8 and r["server_inferences"] == 16 and 2 <= r["server_avg_batch"] <= 8
        assert r["server_compute_infer_ms"] > 0
    # the lookup's memory has variable dims: they come from --shape
    lookup = ("triton", "--url", coordgan_server.http_url, "--protocol", "http", "--model", "coordgan_corr_lookup",
              "--concurrency", "2", "--requests", 4, "--warmup", 0)
    result = invoke(*lookup)
    assert isinstance(result.exception, CoordGANError) and "--shape query:2,N,N" in str(result.exception)
    shapes = ("--shape", f"query:2,{size},{size}", "--shape", f"ref_maps:1,2,{size},{size}",
              "--shape", f"ref_probs:1,3,{size},{size}")
    result = invoke(*lookup, *shapes, "--json", tmp_path / "lookup.json")
    assert result.exit_code == 0, (result.output, result.exception)
    (row,) = json.loads((tmp_path / "lookup.json").read_text())["rows"]
    assert row["status"] == "ok" and row["errors"] == 0 and row["server_requests"] == 4
    result = invoke("triton", "--url", coordgan_server.grpc_url, "--model", "coordgan_video")
    assert isinstance(result.exception, CoordGANError)
    assert str(result.exception).startswith("coordgan_video is a stateful sequence model")


@needs_tritonserver
def test_duration_bound_and_variable_dims(server):
    target = TritonTarget(f"triton://{server.grpc_url}/echo_var")
    try:
        with pytest.raises(CoordGANError, match=r"variable dims \[-1\]; give them with --shape X:N"):
            run_load(target, LoadOptions(concurrency=(1,), requests=2))
        with pytest.raises(CoordGANError, match="does not fit its config dims"):
            run_load(target, LoadOptions(concurrency=(1,), requests=2, shapes={"X": (6, 2)}))
        meta, rows = run_load(target, LoadOptions(concurrency=(2,), requests=None, duration_s=0.3, warmup=1,
                                                  shapes={"X": (6,)}))
    finally:
        target.close()
    (row,) = rows
    assert row["status"] == "ok" and row["errors"] == 0 and row["requests"] >= 2
    assert row["server_requests"] == row["requests"] and meta["options"]["shapes"] == {"X": [6]}
    assert "no dynamic batching" in meta["batching"]


@needs_tritonserver
def test_refusals_are_one_sentence(server):
    cases = [
        (("--url", server.grpc_url, "--model", "echo_seq"), "stateful sequence model"),
        (("--url", server.grpc_url, "--model", "nope"), "no ready model 'nope'; it serves: echo, echo_seq, echo_var, "
                                                        "failing"),
        (("--url", server.grpc_url, "--model", "failing"),
         "Warm-up requests to failing failed: [StatusCode.INTERNAL] model says no."),
        (("--url", f"triton+http://{server.http_url}/nope"), "no ready model 'nope'"),
        (("--url", server.grpc_url, "--model", "echo", "--batch", "9"), "exceeds echo's max_batch_size 8"),
        (("--url", server.grpc_url, "--model", "echo", "--shape", "Z:3"), "not an input of echo"),
        (("--url", f"127.0.0.1:{free_port()}", "--model", "echo"), "Cannot reach a Triton server"),
        (("--url", server.grpc_url, "--model", "echo", "--concurrency", "2,x"), "--concurrency must be positive"),
        (("--url", server.grpc_url, "--model", "echo", "--requests", "0"), "--requests must be at least 1"),
    ]
    for args, message in cases:
        result = invoke("triton", *args)
        assert result.exit_code != 0 and isinstance(result.exception, CoordGANError), (args, result.output)
        text = str(result.exception)
        assert message in text and "\n" not in text, (args, text)
    # the model-target options are not options of the load test (it times what the server serves)
    result = invoke("triton", "--url", server.grpc_url, "--model", "echo", "--preset", "tiny")
    assert result.exit_code == 2 and "No such option" in result.output


@needs_tritonserver
def test_failed_requests_are_counted_not_timed(server, tmp_path):
    """A level whose every request failed is a failed row; a run with nothing timed exits non-zero and
    writes no result file that would read as a measurement."""
    out = tmp_path / "f.json"
    result = invoke("triton", "--url", server.http_url, "--protocol", "http", "--model", "failing",
                    "--concurrency", "2", "--requests", 5, "--warmup", 0, "--json", out)
    assert result.exit_code == 1 and isinstance(result.exception, CoordGANError), result.output
    assert str(result.exception).startswith("Nothing was measured") and not out.exists()
    target = TritonTarget(f"triton+http://{server.http_url}/failing")
    try:
        _, (row,) = run_load(target, LoadOptions(concurrency=(2,), requests=5, warmup=0))
    finally:
        target.close()
    assert row["status"] == "failed" and row["requests"] == 5 and row["errors"] == 5
    assert "5 of 5 requests failed, first: " in row["reason"] and "model says no" in row["reason"]
    assert row["server_requests"] == 5  # the python backend counts error responses as successes
    assert "model says no" in result.output
