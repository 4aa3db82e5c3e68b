"""`coordgan bench`: statistics on known samples, end-to-end runs on the tiny preset (torch + ONNX
Runtime CPU) for every target with JSON / CSV / PNG output, skipped backends with reasons, compare."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coordgan.cli import app
from runtime.bench.report import compare, to_csv
from test_bench_plot import read_png
from runtime.bench.stats import percentile, summarize
from runtime.errors import CoordGANError


def invoke(*args):
    return CliRunner().invoke(app, ["bench", *map(str, args)])


# -- statistics -------------------------------------------------------------------------------------

def test_percentiles_of_known_samples():
    samples = [float(x) for x in range(1, 11)]  # 1..10
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 100) == 10.0
    assert percentile(samples, 50) == pytest.approx(5.5)
    assert percentile(samples, 90) == pytest.approx(9.1)
    assert percentile(samples, 99) == pytest.approx(9.91)
    assert percentile([7.0], 99) == 7.0
    rng = np.random.default_rng(0)
    data = list(rng.exponential(10.0, size=37))
    for q in (50, 90, 99):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)))
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_throughput_and_spread():
    s = summarize([10.0, 20.0, 30.0, 40.0], batch=4)
    assert s["iters"] == 4
    assert s["mean_ms"] == pytest.approx(25.0)
    assert s["p50_ms"] == pytest.approx(25.0)
    assert s["min_ms"] == 10.0 and s["max_ms"] == 40.0
    assert s["throughput"] == pytest.approx(4 * 1000 / 25.0)  # items/s over the whole loop
    assert s["std_ms"] == pytest.approx(float(np.std([10, 20, 30, 40], ddof=1)))


def test_upsample_matches_torch_bilinear():
    """The propagation step's upsampling (what the runtime pipeline runs) is the published path's bilinear."""
    from runtime.propagation.label_resize import upsample

    torch = pytest.importorskip("torch")
    p = np.random.default_rng(1).random((3, 8, 6), dtype=np.float32)
    ours = upsample(p, (19, 11))
    ref = torch.nn.functional.interpolate(torch.from_numpy(p)[None], size=(19, 11), mode="bilinear",
                                          align_corners=False)[0]
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)


# -- end to end on the tiny preset ------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-cache")


@pytest.mark.parametrize("target", ["encoder", "generator", "lookup", "pipeline"])
def test_bench_end_to_end_tiny(target, cache_dir, tmp_path):
    out_json, out_csv, out_png = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    backends = "torch,ort-cpu,ort-cuda,trt,triton" + (",published" if target == "pipeline" else "")
    result = invoke(target, "--preset", "tiny", "--backends", backends, "--batch", "1,2", "--warmup", "1",
                    "--iters", "2", "--threads", "1", "--cache-dir", cache_dir, "--frame-size", "40x48",
                    "--json", out_json, "--csv", out_csv, "--plot", out_png)
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(out_json.read_text())
    assert data["format"] == "coordgan-bench/1" and data["meta"]["target"] == target
    rows = data["rows"]
    timed = {(r["backend"], r["batch"]) for r in rows if r["status"] == "ok"}
    expected = {"torch", "ort-cpu"} | ({"published"} if target == "pipeline" else set())
    assert timed == {(b, n) for b in expected for n in (1, 2)}, rows
    for r in rows:
        if r["status"] == "ok":
            assert r["iters"] == 2 and r["target"] == target
            assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
            assert r["throughput"] == pytest.approx(r["batch"] * 1000 / r["mean_ms"])
            assert r["host_peak_mb"] >= 0
    skipped = {r["backend"]: r["reason"] for r in rows if r["status"] == "skipped"}
    assert "trt" in skipped and "--trt-dir" in skipped["trt"] or target == "lookup"
    assert "triton" in skipped and "--url" in skipped["triton"] or target == "lookup"
    if target == "lookup":  # no engine / served model of its own: skipped with that reason
        assert "trt" in skipped and "triton" in skipped
    from runtime.lookup import cuda_available

    if not cuda_available():
        assert skipped.get("ort-cuda"), rows
    for reason in skipped.values():
        assert reason and "\n" not in reason
    assert "skipped" in result.output
    if target == "pipeline":
        ratios = [r["vs_published"] for r in rows if r["status"] == "ok" and r["backend"] != "published"]
        assert all(x is not None and x > 0 for x in ratios)
        assert "the published path" in result.output
    with open(out_csv, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert {(t["backend"], t["status"]) for t in table} == {(r["backend"], r["status"]) for r in rows}
    read_png(out_png, (1240, 480))  # the matplotlib plot, not blank


def test_gpu_lookup_and_bf16_rows_say_what_runs(cache_dir, tmp_path):
    """--gpu-lookup picks the kernel beside GPU backends (the table says which); bf16 is a torch-on-CUDA
    precision, skipped with its reason elsewhere."""
    out = tmp_path / "r.json"
    result = invoke("lookup", "--preset", "tiny", "--backends", "torch,ort-cpu,ort-cuda", "--gpu-lookup",
                    "cuda-sparse", "--precision", "bf16", "--iters", "1", "--warmup", "0", "--json", out)
    import torch

    if torch.cuda.is_available():
        assert result.exit_code == 0, (result.output, result.exception)
        rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"]}
        assert rows["ort-cpu"]["status"] == "skipped"
    else:  # nothing here runs bf16: every row skipped with its reason, and the run says it measured nothing
        assert result.exit_code == 1 and str(result.exception).startswith("Nothing was measured")
        assert not out.exists() and "skipped lookup / torch: bf16 with PyTorch needs a CUDA GPU" in result.output
    assert "skipped lookup / ort-cpu: bf16 is a PyTorch precision" in result.output
    result = invoke("lookup", "--preset", "tiny", "--backends", "ort-cpu", "--gpu-lookup", "cuda-sparse",
                    "--iters", "1", "--warmup", "0", "--json", out)
    assert result.exit_code == 0, (result.output, result.exception)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "ok" and "numpy auto" in row["detail"]  # a CPU backend keeps the CPU lookup
    from runtime.bench.runners import BackendRunner
    from runtime.bench.workload import Workload

    wl = Workload("lookup", size=32, gpu_lookup="cuda-sparse")
    assert BackendRunner("ort-cuda", wl, lookup_device="cuda").lookup_impl == "cuda-sparse"
    assert BackendRunner("ort-cuda", wl, lookup_device="cuda").detail == "lookup: sparse CUDA kernels"


def test_runtime_pipeline_runs_the_propagation_step(cache_dir, monkeypatch):
    """The runtime rows of `bench pipeline` time propagate's own step on frames decoded from a video,
    and wait, as propagate does, until each frame's PNG is written (the writer thread's flush)."""
    import runtime.propagation.sequence as sequence

    real, real_flush, seen, names = sequence.propagate_batch, sequence.MaskWriter.flush, [], []

    def counting(model, step, batch, size, out, **kwargs):
        real(model, step, batch, size, out, **kwargs)
        seen.append(len(batch))
        names.append([name for _, name, _ in batch])

    def flush(out):
        real_flush(out)
        if names:
            assert all((out.out_dir / f"{name}.png").is_file() for name in names.pop())

    monkeypatch.setattr(sequence, "propagate_batch", counting)
    monkeypatch.setattr(sequence.MaskWriter, "flush", flush)
    result = invoke("pipeline", "--preset", "tiny", "--backends", "ort-cpu", "--batch", "3", "--warmup", "1",
                    "--iters", "2", "--threads", "1", "--cache-dir", cache_dir)
    assert result.exit_code == 0, (result.output, result.exception)
    assert seen == [3, 3, 3]  # the warm-up call and two timed ones, each a batch of 3 decoded frames
    assert names == []  # each batch's files were waited for


def test_compare_ratios(tmp_path, cache_dir):
    def result_file(name, rows):
        path = tmp_path / name
        path.write_text(json.dumps({"format": "coordgan-bench/1", "meta": {}, "rows": rows}))
        return path

    def row(backend, batch, ms, status="ok"):
        return {"target": "encoder", "backend": backend, "batch": batch, "status": status, "p50_ms": ms,
                "mean_ms": ms, "throughput": batch * 1000 / ms}

    a = result_file("a.json", [row("torch", 1, 10.0), row("torch", 8, 40.0), row("ort-cpu", 1, 5.0)])
    b = result_file("b.json", [row("torch", 1, 5.0), row("torch", 8, 80.0), row("trt", 1, 1.0)])
    rows = compare(json.loads(a.read_text()), json.loads(b.read_text()))
    by_key = {(r["backend"], r["batch"]): r for r in rows}
    assert set(by_key) == {("torch", 1), ("torch", 8)}  # only rows in both runs
    assert by_key[("torch", 1)]["p50_ratio"] == pytest.approx(0.5)
    assert by_key[("torch", 1)]["throughput_ratio"] == pytest.approx(2.0)
    assert by_key[("torch", 8)]["mean_ratio"] == pytest.approx(2.0)
    out = tmp_path / "cmp.json"
    result = invoke("compare", a, b, "--json", out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "0.500" in result.output and "2.000" in result.output
    assert len(json.loads(out.read_text())["rows"]) == 2


def test_user_errors_are_one_sentence(tmp_path):
    for args, words in ((("encoder",), "--preset NAME"),
                        (("encoder", "--preset", "tiny", "--backends", "cuda-magic"), "Unknown backend"),
                        (("encoder", "--preset", "tiny", "--batch", "0,x"), "--batch"),
                        (("lookup", "--preset", "tiny", "--gpu-lookup", "cuda-dense"), "--gpu-lookup must be"),
                        (("encoder", "--preset", "tiny", "--precision", "fp8"), "--precision must be"),
                        (("compare", tmp_path / "missing.json", tmp_path / "b.json"), "does not exist")):
        result = invoke(*args)
        assert result.exit_code != 0
        assert isinstance(result.exception, CoordGANError), (args, result.exception)
        assert words in str(result.exception)
    result = invoke("nonsense", "--preset", "tiny")  # not a target: Typer's usage error
    assert result.exit_code == 2 and "No such command 'nonsense'" in result.output


def test_exit_code_says_whether_everything_was_measured(tmp_path):
    """Exit 0 only when something was timed and no row failed; a failed row keeps the table and the
    result files (they name it), a run with nothing timed writes none."""
    out = tmp_path / "r.json"
    result = invoke("lookup", "--preset", "tiny", "--backends", "trt", "--json", out)  # no --trt-dir: skipped
    assert result.exit_code == 1 and isinstance(result.exception, CoordGANError), result.output
    assert str(result.exception) == "Nothing was measured: every row was skipped or failed (the reasons are above)."
    assert "skipped lookup / trt:" in result.output and not out.exists()
    # an --onnx-dir holding another model: ONNX Runtime opens it, then refuses the encoder's input
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 8, 8])
    corr = helper.make_tensor_value_info("corr", TensorProto.FLOAT, ["n", 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["corr"])], "other", [image], [corr])
    (tmp_path / "other").mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9),
              tmp_path / "other" / "encoder.onnx")
    result = invoke("encoder", "--preset", "tiny", "--backends", "torch,ort-cpu", "--onnx-dir", tmp_path / "other",
                    "--iters", "1", "--warmup", "0", "--threads", "1", "--json", out)
    assert result.exit_code == 1 and isinstance(result.exception, CoordGANError), result.output
    assert str(result.exception) == "1 of 2 rows failed: ort-cpu (batch 1) (the reasons are above)."
    assert "failed encoder / ort-cpu (batch 1): Input image must have shape" in result.output
    rows = {r["backend"]: r["status"] for r in json.loads(out.read_text())["rows"]}
    assert rows == {"torch": "ok", "ort-cpu": "failed"}


def test_output_paths_are_checked_before_measuring(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    unwritable = tmp_path / "file" / "r.out"
    for option in ("--json", "--csv", "--plot"):
        result = invoke("encoder", "--preset", "tiny", "--backends", "torch", option, unwritable)
        assert result.exit_code == 1 and isinstance(result.exception, CoordGANError), (option, result.output)
        assert str(result.exception) == f"Cannot write {unwritable}: {tmp_path / 'file'} is a file, not a folder."
        assert "coordgan bench" not in result.output  # refused before the run: no table
    result = invoke("encoder", "--preset", "tiny", "--backends", "torch", "--json", tmp_path)
    assert str(result.exception) == f"{tmp_path} is a folder; give a file name to write."
    # the load test and compare too: refused before reaching (here: without) a server or reading anything
    for args in (("triton", "--url", "127.0.0.1:1", "--model", "m"), ("compare", tmp_path / "a", tmp_path / "b")):
        result = invoke(*args, "--json", unwritable)
        assert str(result.exception).startswith(f"Cannot write {unwritable}:"), (args, result.exception)
    # a missing folder is made, as the files were written into one before
    result = invoke("lookup", "--preset", "tiny", "--backends", "ort-cpu", "--iters", "1", "--warmup", "0",
                    "--json", tmp_path / "new" / "r.json")
    assert result.exit_code == 0 and (tmp_path / "new" / "r.json").is_file(), (result.output, result.exception)


def test_csv_has_header_and_blank_for_missing():
    text = to_csv([{"target": "lookup", "backend": "trt", "batch": None, "status": "skipped", "reason": "why"}])
    head, line = text.strip().splitlines()
    assert head.startswith("target,backend,batch")
    assert line.startswith("lookup,trt,,") and line.endswith("why")


def test_bench_help_starts_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from coordgan.cli import app\n"
            "import runtime.bench, runtime.bench.report, runtime.bench.runners, runtime.bench.workload\n"
            "sys.argv = ['coordgan', 'bench', 'encoder', '--help']\n"
            "app()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--backends" in result.stdout


def test_whole_command_benchmark_table_parses(tmp_path):
    """benchmarks/bench_propagate.py on the tiny preset: the real `coordgan propagate` per case, one table
    with frames/s and a column per stage that sum to about the wall time per frame."""
    import os

    env = {**os.environ, "COORDGAN_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "benchmarks/bench_propagate.py", "--preset", "tiny", "--frames", "6",
                             "--size", "64", "--labels", "parts,20"], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["maps", "labels"])
    header = lines[start].split()
    rows = [line.split() for line in lines[start + 2:start + 6]]
    assert header[2:] == ["frames/s", "ms/frame", "decode", "ms", "preprocess", "ms", "encoder", "ms", "lookup", "ms",
                          "upsample_argmax", "ms", "write", "ms"]
    assert {(r[0], r[1]) for r in rows} == {(m, lab) for m in ("spread", "collapsed") for lab in ("parts", "20")}
    for r in rows:
        fps, per_frame, stages = float(r[2]), float(r[3]), [float(x) for x in r[4:]]
        assert fps > 0 and len(stages) == 6 and 0.5 * per_frame <= sum(stages) <= 1.05 * per_frame, r


def test_fast_options_benchmark_table_parses(tmp_path):
    """benchmarks/bench_fast.py on the tiny preset: the exact export, two --warp-grid ones, --int8 and the
    other int8 layer sets side by side, each with its speed and its quality columns."""
    import os

    env = {**os.environ, "COORDGAN_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "benchmarks/bench_fast.py", "--preset", "tiny", "--frames", "6",
                             "--int8-layers"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] == ["tiny"]]
    assert [" ".join(r[1:-8]) for r in rows] == ["exact", "--warp-grid 16", "--warp-grid 8", "--int8",
                                                 "int8 hidden Gemm", "int8 hidden Gemm+Relu", "int8 every Gemm",
                                                 "int8 every Gemm+Conv"]
    exact = rows[0]
    assert exact[-7] == "1.00x" and float(exact[-5]) == 0 and exact[-3] == "100.00%"
    for r in rows:
        assert float(r[-8]) > 0 and float(r[-6]) > 0 and 0 <= float(r[-2]) <= 1  # encoder ms, frames/s, J


def test_training_step_profile_runs_on_cpu():
    """benchmarks/profile_train_step.py, the tool that found the GPU step's bottleneck: one row per
    chunk size (D, G, step, images/s, ratio to the first) and the profiler's table, on a CPU."""
    result = subprocess.run([sys.executable, "benchmarks/profile_train_step.py", "--batch", "4", "--steps", "1",
                             "--profile-steps", "1", "--chunks", "4096,65536", "--lpips-net", "alex"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("chunk ")]
    assert [r[1] for r in rows] == ["4096:", "65536:"]
    for r in rows:
        d_ms, g_ms, step_ms = float(r[3]), float(r[6]), float(r[9])
        assert d_ms > 0 and g_ms > 0 and step_ms == pytest.approx(d_ms + g_ms, abs=0.15)
    assert rows[0][13] == "(1.00x" and "profile of 1 steps at chunk" in result.stdout
    assert "aten::" in result.stdout  # the profiler's table


def test_r1_blur_benchmark_runs_and_the_paths_agree():
    """benchmarks/bench_r1_blur.py: fewer ops with the blur's own autograd function, same gradients."""
    result = subprocess.run([sys.executable, "benchmarks/bench_r1_blur.py", "tiny", "2", "1"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ops = re.search(r"ops (\d+) -> (\d+);.*difference ([0-9.e+-]+)", result.stdout)
    assert ops, result.stdout
    assert int(ops[2]) < int(ops[1]) / 2 and float(ops[3]) < 1e-4
