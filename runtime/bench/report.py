"""Benchmark results: a rich table, JSON, CSV, a PNG plot (Pillow), and comparison of two runs.

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
from runtime.fileio import atomic_write

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path, "w") as f:
            f.write(text)
    except OSError as exc:
        raise CoordGANError(f"Cannot write {path}: {exc.strerror or exc}.") from None


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
# plot (Pillow: no matplotlib needed)

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _nice_ticks(lo: float, hi: float, log: bool):
    if log:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        if a == b:
            b += 1
        return [10.0 ** e for e in range(a, b + 1)]
    span = hi - lo or 1.0
    step = 10 ** math.floor(math.log10(span / 4))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= 6:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]


def render_plot(rows, path, title: str = "coordgan bench") -> None:
    """Two panels, latency p50 (log ms) and throughput (log items/s) vs batch, one line per target/backend."""
    from PIL import Image, ImageDraw, ImageFont

    series: dict[str, list] = {}
    for r in ok_rows(rows):
        series.setdefault(f"{r['target']} / {r['backend']}", []).append((r["batch"], r["p50_ms"], r["throughput"]))
    if not series:
        raise CoordGANError("Nothing to plot: no backend produced timings.")
    for pts in series.values():
        pts.sort()
    font = ImageFont.load_default()
    pw, ph, margin = 520, 360, 70
    legend_h = 18 * len(series) + 20
    img = Image.new("RGB", (2 * pw + 40, ph + legend_h + 70), "white")
    draw = ImageDraw.Draw(img)
    draw.text((20, 8), title, fill="black", font=font)
    batches = sorted({b for pts in series.values() for b, _, _ in pts})
    bx_lo, bx_hi = math.log2(min(batches)), math.log2(max(batches))
    if bx_lo == bx_hi:
        bx_lo, bx_hi = bx_lo - 1, bx_hi + 1
    for panel, (label, idx) in enumerate((("latency p50 (ms)", 1), ("throughput (items/s)", 2))):
        x0, y0 = 20 + panel * (pw + 20) + margin, 48
        w, h = pw - margin - 10, ph - 60
        vals = [p[idx] for pts in series.values() for p in pts if p[idx] and p[idx] > 0 and math.isfinite(p[idx])]
        lo, hi = min(vals), max(vals)
        ticks = _nice_ticks(lo, hi, log=True)
        ylo, yhi = math.log10(ticks[0]), math.log10(ticks[-1])

        def to_xy(b, v):
            fx = (math.log2(b) - bx_lo) / (bx_hi - bx_lo)
            fy = (math.log10(v) - ylo) / (yhi - ylo or 1)
            return x0 + fx * w, y0 + h - fy * h

        draw.rectangle([x0, y0, x0 + w, y0 + h], outline="black")
        for t in ticks:
            _, y = to_xy(batches[0], t)
            draw.line([x0, y, x0 + w, y], fill=(225, 225, 225))
            draw.text((x0 - margin + 4, y - 6), f"{t:g}", fill="black", font=font)
        for b in batches:
            x, _ = to_xy(b, ticks[0])
            draw.line([x, y0, x, y0 + h], fill=(235, 235, 235))
            draw.text((x - 4, y0 + h + 4), str(b), fill="black", font=font)
        draw.text((x0 + w / 2 - 20, y0 + h + 20), "batch", fill="black", font=font)
        draw.text((x0, y0 - 16), label + " (log scale)", fill="black", font=font)
        for i, pts in enumerate(series.values()):
            colour = _COLOURS[i % len(_COLOURS)]
            xy = [to_xy(b, p[idx - 1]) for b, *p in pts if p[idx - 1] and p[idx - 1] > 0]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    ly = ph + 40
    for i, name in enumerate(series):
        colour = _COLOURS[i % len(_COLOURS)]
        draw.rectangle([30, ly + 18 * i + 3, 42, ly + 18 * i + 13], fill=colour)
        draw.text((50, ly + 18 * i + 2), name, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path) as f:
            img.save(f, format="PNG")
    except OSError as exc:
        raise CoordGANError(f"Cannot write {path}: {exc.strerror or exc}.") from None
