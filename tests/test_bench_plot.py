"""`coordgan bench ... --plot`: matplotlib PNGs of latency (p50, p99) and throughput, read back."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from coordgan.cli import app
from runtime.bench import report
from runtime.bench.report import machine_label, render_compare_plot, render_plot, to_json
from runtime.bench.stats import summarize

META = {"target": "encoder", "workload": "tiny encoder", "time": "2026-12-07T09:50:00Z",
        "machine": {"gpu": None, "cpus": 2, "threads": 1, "platform": "Linux-6.1-x86_64-with-glibc2.36"}}


def row(backend, batch, ms, **more):
    """A row as a run writes it: summarize() of latencies around `ms`."""
    lat = (ms * (1 + np.random.default_rng(batch).exponential(0.1, 20))).tolist()
    return {"target": "encoder", "backend": backend, "batch": batch, "status": "ok", **summarize(lat, batch), **more}


def rows(scale: float = 1.0):
    """Two backends over batch sizes (latency growing with the batch), and a skipped one."""
    timed = [row(b, n, ms * scale * n) for b, ms in (("torch", 4.0), ("ort-cpu", 2.5)) for n in (1, 2, 4, 8)]
    return timed + [{"target": "encoder", "backend": "trt", "batch": None, "status": "skipped", "reason": "no plan"}]


def triton_rows():
    """A load test: batches 1 and 2 over 1..8 clients."""
    return [row("triton-grpc", n, 3.0 * n * c ** 0.5, concurrency=c) for n in (1, 2) for c in (1, 2, 4, 8)]


def read_png(path, size):
    """The picture, checked: a PNG of this size with lines and text on it, not a blank canvas."""
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == size
        pixels = np.asarray(img.convert("RGB"))
    assert (pixels.min(axis=2) < 200).mean() > 0.02  # axes, lines and labels
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::7]}
    assert len(colours) > 50  # several series, antialiased: more than black on white
    return pixels


def test_machine_label_says_what_and_when():
    assert machine_label(META) == "no GPU, 2 CPUs, 1 thread, Linux, 2026-12-07 09:50:00 UTC"
    assert machine_label({"machine": {"gpu": "NVIDIA H100 80GB HBM3", "cpus": 16}}) == "NVIDIA H100 80GB HBM3, 16 CPUs"


def test_latency_and_triton_plots(tmp_path):
    render_plot(rows(), tmp_path / "bench.png", META, title="coordgan bench encoder")
    read_png(tmp_path / "bench.png", (1240, 480))
    render_plot(triton_rows(), tmp_path / "triton.png", {**META, "target": "triton"}, title="coordgan bench triton")
    read_png(tmp_path / "triton.png", (1240, 480))


def test_compare_plot_and_refusals(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(to_json(META, rows()))
    b.write_text(to_json({**META, "time": "2026-12-08T10:00:00Z"}, rows(scale=0.7)))
    result = CliRunner().invoke(app, ["bench", "compare", str(a), str(b), "--plot", str(tmp_path / "c.png")])
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"wrote {tmp_path / 'c.png'}" in result.output
    read_png(tmp_path / "c.png", (1240, 480))
    # without matplotlib: one sentence, before anything is read or measured
    code = ("import sys; sys.modules['matplotlib'] = None; sys.argv = ['coordgan', *sys.argv[1:]]; "
            "from coordgan.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code, "bench", "compare", str(a), str(b), "--plot",
                           str(tmp_path / "d.png")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and not (tmp_path / "d.png").exists()
    assert done.stderr.strip() == ("Error: --plot needs matplotlib; install it with: pip install "
                                   "'coordgan-deploy[plot]' (or pip install matplotlib).")
    assert "vs" not in done.stdout  # refused before the comparison table
    with pytest.raises(Exception, match="Nothing to plot: no row was timed"):
        render_plot([r for r in rows() if r["status"] != "ok"], tmp_path / "e.png", META)
    assert not (tmp_path / "e.png").exists()
    assert json.loads(a.read_text())["rows"]  # the inputs untouched


def test_compare_plot_draws_no_bar_for_a_row_without_a_ratio(tmp_path, monkeypatch):
    """A's p50 of 0 leaves the ratio unknown: that row is labelled n/a and has no bar (it drew a green
    zero-length bar, "B is faster")."""
    a = {"meta": META, "rows": rows()}
    a["rows"][0] = {**a["rows"][0], "p50_ms": 0.0}  # torch, batch 1
    b = {"meta": META, "rows": rows(scale=1.3)}
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    render_compare_plot(a, b, tmp_path / "c.png", "a", "b")
    right = figures[0].axes[1]
    bars = right.patches
    labels = [t.get_text() for t in right.get_yticklabels()]
    assert len(labels) == 8 and labels[0] == "torch, batch 1: n/a"
    assert len(bars) == 7  # one per row with a ratio
    assert sorted(round(b.get_y() + b.get_height() / 2) for b in bars) == list(range(1, 8))
    assert all(b.get_width() > 1 for b in bars)  # B is slower in every drawn row: all red
    assert {tuple(b.get_facecolor()) for b in bars} == {tuple(bars[0].get_facecolor())}
