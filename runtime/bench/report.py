"""Benchmark results: a rich table, JSON, CSV, PNG plots (matplotlib), and comparison of two runs.

A result file is {"meta": {...}, "rows": [...]}; one row per (target, backend, batch), with
status "ok" (numbers), "skipped" or "failed" (reason, one sentence).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from runtime.errors import CoordGANError
from runtime.fileio import atomic_write, check_target

COLUMNS = ("target", "backend", "batch", "precision", "device", "status", "iters", "p50_ms", "p90_ms", "p99_ms",
           "mean_ms", "min_ms", "max_ms", "std_ms", "throughput", "host_peak_mb", "gpu_peak_mb",
           "vs_published", "timing", "detail", "reason")
FORMAT = "coordgan-bench/1"


def ok_rows(rows):
    return [r for r in rows if r.get("status") == "ok"]


def add_published_ratios(rows) -> None:
    """Pipeline rows get vs_published = throughput / the published path's throughput at that batch."""
    base = {(r["target"], r["batch"]): r["throughput"] for r in ok_rows(rows) if r["backend"] == "published"}
    for r in ok_rows(rows):
        ref = base.get((r["target"], r["batch"]))
        r["vs_published"] = r["throughput"] / ref if ref else None


def fmt(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{max(digits, 2)}f}"
    return str(value)


def text_table(rows, header) -> str:
    """Plain text, right-aligned columns under a dashed rule: the benchmark scripts' tables (BENCHMARKS.md)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(r, widths))
                     for r in [header, ["-" * w for w in widths], *rows])


def render_table(rows, title: str = "coordgan bench", console=None) -> None:
    from rich.table import Table

    from runtime import terminal

    console = console or terminal.console()
    has_ratio = any(r.get("vs_published") is not None for r in rows)
    has_gpu = any(r.get("gpu_peak_mb") is not None for r in rows)
    table = Table(title=title)
    for name in ("target", "backend", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "items/s", "host MB"):
        table.add_column(name, justify="right" if name not in ("target", "backend") else "left")
    if has_gpu:
        table.add_column("GPU MB", justify="right")
    if has_ratio:
        table.add_column("vs published", justify="right")
    table.add_column("notes", overflow="fold")
    for r in ok_rows(rows):
        cells = [r["target"], r["backend"], str(r["batch"]), fmt(r["p50_ms"]), fmt(r["p90_ms"]),
                 fmt(r["p99_ms"]), fmt(r["mean_ms"]), fmt(r["throughput"], 2), fmt(r["host_peak_mb"])]
        if has_gpu:
            cells.append(fmt(r.get("gpu_peak_mb")))
        if has_ratio:
            ratio = r.get("vs_published")
            cells.append("-" if ratio is None else f"{ratio:.1f}x")
        notes = [r.get("device", ""), r.get("precision", ""), f"{r['iters']} iters"]
        if r.get("detail"):
            notes.append(r["detail"])
        cells.append(", ".join(n for n in notes if n))
        table.add_row(*cells)
    if ok_rows(rows):
        console.print(table)
    for r in rows:
        if r["status"] != "ok":
            at = f" (batch {r['batch']})" if r.get("batch") is not None else ""
            console.print(terminal.tagged(r["status"], f" {r['target']} / {r['backend']}{at}: {r.get('reason', '')}"))


def to_json(meta: dict, rows) -> str:
    return json.dumps({"format": FORMAT, "meta": meta, "rows": list(rows)}, indent=2, default=str) + "\n"


def to_csv(rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    return buf.getvalue()


def _row_name(r) -> str:
    where = [f"{k} {r[k]}" for k in ("batch", "concurrency") if r.get(k) is not None]
    return " ".join([r.get("backend") or r.get("target", "")] + ([f"({', '.join(where)})"] if where else []))


def failures(rows) -> str | None:
    """The sentence a run must end with when it did not measure what was asked, else None: nothing was
    timed (every row skipped or failed), or a row failed. Skipped rows alone (no GPU here) are fine."""
    failed = [r for r in rows if r.get("status") == "failed"]
    if not ok_rows(rows):
        return "Nothing was measured: every row was skipped or failed (the reasons are above)."
    if failed:
        return f"{len(failed)} of {len(rows)} rows failed: {', '.join(map(_row_name, failed))} (the reasons are above)."
    return None


def write_text(path, text: str) -> None:
    """atomic_write's refusals are the sentence already (a WriteError naming the path): not wrapped again."""
    path = Path(path)
    check_target(path, make_folder=True)
    with atomic_write(path, "w") as f:
        f.write(text)


def load_results(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CoordGANError(f"Benchmark result {path} does not exist.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CoordGANError(f"{path} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("rows"), list):
        raise CoordGANError(f"{path} is not a coordgan bench result (written by coordgan bench --json).")
    return data


# --------------------------------------------------------------------------------------------------
# compare


def compare(a: dict, b: dict) -> list[dict]:
    """Rows present and ok in both runs (same target, backend, batch), with b / a ratios."""
    def key(r):
        return (r["target"], r["backend"], r["batch"])

    index = {key(r): r for r in ok_rows(a["rows"])}
    out = []
    for rb in ok_rows(b["rows"]):
        ra = index.get(key(rb))
        if ra is None:
            continue
        out.append({"target": rb["target"], "backend": rb["backend"], "batch": rb["batch"],
                    "a_p50_ms": ra["p50_ms"], "b_p50_ms": rb["p50_ms"],
                    "p50_ratio": rb["p50_ms"] / ra["p50_ms"] if ra["p50_ms"] else None,
                    "mean_ratio": rb["mean_ms"] / ra["mean_ms"] if ra["mean_ms"] else None,
                    "a_throughput": ra["throughput"], "b_throughput": rb["throughput"],
                    "throughput_ratio": rb["throughput"] / ra["throughput"] if ra["throughput"] else None})
    return out


def render_compare(rows, name_a: str, name_b: str, console=None) -> None:
    from rich.table import Table

    from runtime import terminal

    console = console or terminal.console()
    table = Table(title=f"{name_b} vs {name_a} (ratios b / a; latency < 1 and throughput > 1: b is faster)")
    for name in ("target", "backend", "batch", "a p50 ms", "b p50 ms", "p50 b/a", "mean b/a",
                 "a items/s", "b items/s", "items/s b/a"):
        table.add_column(name, justify="left" if name in ("target", "backend") else "right")
    for r in rows:
        table.add_row(r["target"], r["backend"], str(r["batch"]), fmt(r["a_p50_ms"]), fmt(r["b_p50_ms"]),
                      fmt(r["p50_ratio"], 3), fmt(r["mean_ratio"], 3), fmt(r["a_throughput"], 2),
                      fmt(r["b_throughput"], 2), fmt(r["throughput_ratio"], 3))
    console.print(table)


# --------------------------------------------------------------------------------------------------
# plots (matplotlib, imported only here: the tables and files need none of it)

INSTALL_PLOT = "pip install 'coordgan-deploy[plot]' (or pip install matplotlib)"
_UNITS = {"pipeline": "frames/s", "encoder": "images/s", "generator": "images/s", "lookup": "query maps/s"}


def machine_label(meta: dict) -> str:
    """'NVIDIA H100 80GB HBM3, 16 CPUs, Linux, 2026-12-07 09:50 UTC': what ran it, and when."""
    m = meta.get("machine") or {}
    parts = [m.get("gpu") or "no GPU", f"{m.get('cpus')} CPUs" if m.get("cpus") else None,
             f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}" if m.get("threads") else None,
             str(m["platform"]).split("-")[0] if m.get("platform") else None,
             str(meta.get("time", "")).replace("T", " ").replace("Z", " UTC") or None]
    return ", ".join(p for p in parts if p)


def render_plot(rows, path, meta: dict, title: str = "coordgan bench") -> None:
    """Latency (p50 solid, p99 dashed, the band between) and throughput: over batch sizes per target and
    backend, or over concurrency per batch for a Triton load test (rows with a concurrency)."""
    ok = ok_rows(rows)
    if not ok:
        raise CoordGANError("Nothing to plot: no row was timed.")
    fig, (left, right) = _figure(2)
    if any(r.get("concurrency") is not None for r in ok):
        several = len({r["target"] for r in ok}) > 1
        series = _series(ok, lambda r: (f"{r['target']} " if several else "") + f"batch {r['batch']}", "concurrency")
        _throughput(left, series, "concurrency", "clients (concurrency)", "inferences/s")
        _latency(right, series, "concurrency", "clients (concurrency)", "per request")
    else:
        several = len({r["target"] for r in ok}) > 1
        series = _series(ok, lambda r: f"{r['target']} / {r['backend']}" if several else r["backend"], "batch")
        _latency(left, series, "batch", "batch size", "per call")
        units = {_UNITS.get(r["target"], "items/s") for r in ok}
        _throughput(right, series, "batch", "batch size", units.pop() if len(units) == 1 else "items/s")
    fig.suptitle(f"{title}\n{machine_label(meta)}", fontsize=10)
    _save(fig, path)


def render_compare_plot(a: dict, b: dict, path, name_a: str, name_b: str) -> None:
    """Two results: p50 (with p99 as the bar above it) of A solid and B dashed over batch sizes, and B / A
    of p50 per shared row (< 1: B is faster)."""
    rows = compare(a, b)
    if not rows:
        raise CoordGANError("Nothing to plot: the two results have no timed rows in common.")
    shared = {(r["target"], r["backend"], r["batch"]) for r in rows}
    fig, (left, right) = _figure(2)
    several = len({r["target"] for r in rows}) > 1
    for style, data, name in (("-", a, name_a), ("--", b, name_b)):
        picked = [r for r in ok_rows(data["rows"]) if (r["target"], r["backend"], r["batch"]) in shared]
        series = _series(picked, lambda r: (f"{r['target']} / " if several else "") + r["backend"], "batch")
        _latency(left, series, "batch", "batch size", "per call", style=style, suffix=f" ({name})", band=False)
    labels = [f"{r['backend']}, batch {r['batch']}" + (f" ({r['target']})" if several else "")
              + ("" if r["p50_ratio"] is not None else ": n/a") for r in rows]
    # a row without a ratio (A's p50 is 0) gets no bar: a zero-length green one read "B is faster"
    drawn = [(i, r["p50_ratio"]) for i, r in enumerate(rows) if r["p50_ratio"] is not None]
    right.barh([i for i, _ in drawn], [x for _, x in drawn], color=["C2" if x < 1 else "C3" for _, x in drawn])
    right.set_yticks(range(len(rows)), labels=labels, fontsize=8)
    right.axvline(1.0, color="black", linewidth=1)
    right.set_xlabel(f"p50 latency {name_b} / {name_a} (< 1: {name_b} is faster)")
    right.invert_yaxis()
    fig.suptitle(f"{name_b} vs {name_a}\n{name_a}: {machine_label(a.get('meta') or {})}\n"
                 f"{name_b}: {machine_label(b.get('meta') or {})}", fontsize=9)
    _save(fig, path)


def check_plotting():
    """matplotlib's Figure, or the sentence saying how to install it (asked before a run measures anything)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        raise CoordGANError(f"--plot needs matplotlib; install it with: {INSTALL_PLOT}.") from None
    return Figure


def _figure(columns: int):
    fig = check_plotting()(figsize=(6.2 * columns, 4.8), dpi=100, layout="constrained")
    return fig, fig.subplots(1, columns)


def _series(rows, name, x_key: str) -> dict[str, list]:
    series: dict[str, list] = {}
    for r in rows:
        series.setdefault(name(r), []).append(r)
    return {k: sorted(v, key=lambda r: r[x_key]) for k, v in series.items()}


def _log_y(ax) -> None:
    """A log axis labelled 20, 30, 50 rather than 2x10^1 (minor labels only where they fit)."""
    from matplotlib.ticker import LogFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _x_axis(ax, series, x_key: str, label: str) -> None:
    xs = sorted({r[x_key] for pts in series.values() for r in pts})
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, labels=[str(x) for x in xs])
    ax.tick_params(axis="x", which="minor", bottom=False)
    ax.set_xlabel(label)
    ax.grid(True, which="both", alpha=0.3)


def _latency(ax, series, x_key, xlabel, per, *, style="-", suffix="", band=True) -> None:
    for i, (name, pts) in enumerate(series.items()):
        xs, p50, p99 = [r[x_key] for r in pts], [r["p50_ms"] for r in pts], [r["p99_ms"] for r in pts]
        colour = f"C{i % 10}"
        ax.plot(xs, p50, style, marker="o", color=colour, label=name + suffix)
        if band:
            ax.plot(xs, p99, ":", color=colour, alpha=0.8)
            ax.fill_between(xs, p50, p99, color=colour, alpha=0.12)
        else:
            ax.errorbar(xs, p50, yerr=[[0] * len(xs), [q - m for m, q in zip(p50, p99)]], fmt="none",
                        ecolor=colour, capsize=3, alpha=0.7)
    _log_y(ax)
    ax.set_ylabel(f"latency {per} (ms, log)")
    ax.set_title("p50 (line) and p99 (" + ("dotted, shaded between" if band else "bar top") + ")", fontsize=9)
    _x_axis(ax, series, x_key, xlabel)
    ax.legend(fontsize=8)


def _throughput(ax, series, x_key, xlabel, unit) -> None:
    for i, (name, pts) in enumerate(series.items()):
        ax.plot([r[x_key] for r in pts], [r["throughput"] for r in pts], "-", marker="o", color=f"C{i % 10}",
                label=name)
    _log_y(ax)
    ax.set_ylabel(f"throughput ({unit}, log)")
    ax.set_title("throughput", fontsize=9)
    _x_axis(ax, series, x_key, xlabel)
    ax.legend(fontsize=8)


def _save(fig, path) -> None:
    path = Path(path)
    check_target(path, make_folder=True)
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
