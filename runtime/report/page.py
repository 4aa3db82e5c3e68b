"""The report's HTML: one self-contained page (inline CSS and a few lines of JS, no network), its
images in a folder beside it, every link relative to the page's folder."""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from string import Template
from urllib.parse import quote

from runtime.davis.evaluate import CONVENTION
from runtime.report.collect import Run, SequenceRun, outputs

# $-placeholders only: the JS below uses no template literals.
_PAGE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1180px; padding: 16px 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 2px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 16px; margin: 0 0 4px; } .sub { color: #666; margin: 0 0 12px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
.alert { background: #fff4e5; border-left: 4px solid #f0a020; padding: 6px 10px; margin: 10px 0; }
table { border-collapse: collapse; } th, td { padding: 3px 10px; text-align: right; border-bottom: 1px solid #e4e4e4; }
th:first-child, td:first-child { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; background: #f3f3f3; }
table.sortable th[data-dir=asc]::after { content: " \\25B2"; } table.sortable th[data-dir=desc]::after { content: " \\25BC"; }
section.seq { border-top: 1px solid #ddd; padding: 14px 0; }
.badge { font-size: 12px; padding: 1px 7px; border-radius: 9px; background: #e6f4ea; color: #1e6b34; margin-left: 6px; }
.badge.incomplete { background: #fff4e5; color: #8a5300; } .badge.failed { background: #fde8e8; color: #9b1c1c; }
.row { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
.strip { display: flex; gap: 6px; overflow-x: auto; margin: 8px 0; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; text-align: center; }
img.broken { outline: 2px solid #d33; }
ul.warn li { color: #8a5300; } ul.notes li { color: #555; }
table.objects { margin: 6px 0; font-size: 12px; } table.objects th, table.objects td { padding: 2px 7px; }
.links a { margin-right: 12px; }
</style></head>
<body>
<header>
<h1>$heading</h1>
<p class="sub">$subtitle</p>
$facts
$alerts
</header>
<h2>Sequences</h2>
$overview
$sections
<script>
// Sort the overview by a column on click (numbers as numbers, blanks last).
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var dir = th.dataset.dir === "asc" ? -1 : 1;
    th.closest("tr").querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = dir === 1 ? "asc" : "desc";
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      if (x === "" || y === "") return (x === "") - (y === "");
      var nx = Number(x), ny = Number(y);
      return dir * (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
// Mark images that did not load (and count those that did, for a headless check).
window.addEventListener("load", function () {
  var ok = 0;
  Array.prototype.forEach.call(document.images, function (img) {
    if (img.complete && img.naturalWidth > 0) ok++; else img.classList.add("broken");
  });
  document.body.dataset.images = ok + "/" + document.images.length;
});
</script>
</body></html>
""")


def render(run: Run, images: dict[str, list[tuple[str, str, tuple[int, int]]]], notes: dict[str, list[str]],
           page_dir: Path) -> str:
    """The page. images: sequence name -> (frame name, src relative to the page, (w, h)) of its strip;
    notes: more notes per sequence (why frames are not shown)."""
    order = _order(run)
    name = run.folder.resolve().name
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _PAGE.substitute(
        title=escape(f"CoordGAN propagation: {name}"), heading=escape(f"Propagation report: {name}"),
        subtitle=escape(f"{run.folder.resolve()} · written {written}"), facts=_facts(run), alerts=_alerts(run),
        overview=_overview(run, order),
        sections="\n".join(_section(i, s, images.get(s.name, []), notes.get(s.name, []), page_dir)
                           for i, s in order))


def _order(run: Run) -> list[tuple[int, SequenceRun]]:
    """(anchor index, sequence): worst J&F first when scored, unscored after; else in name order."""
    indexed = list(enumerate(run.sequences))
    if run.scored:
        indexed.sort(key=lambda p: (p[1].jf is None, p[1].jf or 0.0))
    return indexed


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _facts(run: Run) -> str:
    rows = []
    summaries = [s.summary for s in run.sequences if s.summary]
    backends = sorted({s.get("model") for s in summaries if s.get("model")})
    encoders = sorted({(s.get("fingerprint") or {}).get("model") for s in summaries} - {None})
    if backends or encoders:
        rows.append(("model", "; ".join(backends + [f"encoder {e[:23]}…" if len(e) > 24 else e for e in encoders])))
    if run.manifest:
        m = run.manifest
        ck = m.get("checkpoint") or {}
        made = (m.get("tool_versions") or {}).get("coordgan-deploy")
        rows.append(("export", f"preset {m.get('preset')}, checkpoint {ck.get('path')} (sha256 "
                               f"{str(ck.get('sha256'))[:12]}), opset {m.get('opset')}, fp16 {m.get('fp16')}"
                               + (f", coordgan-deploy {made}" if made else "")))
    if run.demo:
        d = run.demo
        scores = ", ".join(f"{k}: J {_num(d[k].get('J_mean'))} F {_num(d[k].get('F_mean'))}"
                           for k in ("propagated", "identity baseline") if isinstance(d.get(k), dict))
        rows.append(("demo", f"checkpoint {d.get('checkpoint') or '-'}, {d.get('frames')} frames of "
                             f"{d.get('size')} px; {scores}"))
    options = sorted({_options(s.get("options") or {}) for s in summaries})
    if options:
        rows.append(("options", " | ".join(options)))
    rows.append(("totals", _totals(run)))
    if run.scored:
        objects = [o for s in run.scored for o in s.scores["objects"].values()]
        j, f = _mean(o["J"]["mean"] for o in objects), _mean(o["F"]["mean"] for o in objects)
        rows.append(("J and F", f"J {_num(j)}, F {_num(f)}, J&F {_num((j + f) / 2)}: means over "
                                f"{len(objects)} (sequence, object) pairs of {len(run.scored)} sequences; "
                                f"{CONVENTION}; frames 1..n-2"))
    if run.cluster:
        c = run.cluster
        retries = sum(max(0, (s.get("attempts") or 1) - 1) for s in c.get("sequences", []))
        rows.append(("cluster", f"Ray {c.get('address')}: {counted(c.get('workers') or 0, 'worker')} x "
                                f"{counted(c.get('threads_per_worker') or 0, 'thread')}, start-up {_num(c.get('startup_s'), 1)} s, run {_num(c.get('seconds'), 1)} s, "
                                f"{_num(c.get('frames_per_s'), 1)} frames/s, {counted(retries, 'retry', 'retries')}, "
                                f"{c.get('failed', 0)} failed"))
    body = "\n".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in rows)
    return f'<dl class="facts">\n{body}\n</dl>'


def _options(o: dict) -> str:
    topk = o.get("topk")
    return (f"batch {o.get('batch')}, memory {o.get('memory')}, tau {o.get('tau')}, "
            f"top-k {'all' if topk is None else topk}" + (", probabilities saved" if o.get("save_probs") else ""))


def _totals(run: Run) -> str:
    counts = {}
    for s in run.sequences:
        counts[s.status] = counts.get(s.status, 0) + 1
    summaries = [s.summary for s in run.sequences if s.summary]
    frames = sum(s.get("frames") or 0 for s in summaries)
    processed = sum(s.get("frames_processed") or 0 for s in summaries)
    seconds = sum((s.get("seconds") or {}).get("total") or 0.0 for s in summaries)
    warnings = sum(len(s.get("warnings") or []) for s in summaries)
    text = (counted(len(run.sequences), "sequence") + " (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + f"); {counted(frames, 'frame')}, {processed} propagated in {seconds:.1f} s")
    if seconds > 0:
        text += f" ({processed / seconds:.1f} frames/s)"
    return text + f"; {counted(warnings, 'warning')}"


def counted(n: int, word: str, plural: str | None = None) -> str:
    """'1 warning', '3 warnings' ('retry', 'retries' with plural=)."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _mean(values) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def _alerts(run: Run) -> str:
    said = []
    if run.incomplete:
        said.append(f"Incomplete sequences (drawn as far as they got): {', '.join(run.incomplete)}.")
    failed = [s.name for s in run.sequences if s.status == "failed"]
    if failed:
        said.append(f"Failed sequences: {', '.join(failed)}.")
    if run.manifest_note:
        said.append(run.manifest_note + ".")
    return "\n".join(f'<p class="alert">{escape(s)}</p>' for s in said)


def _overview(run: Run, order) -> str:
    scored = bool(run.scored)
    heads = ["sequence", "status", "frames", "frames/s", "warnings"] + (["J", "F", "J&F"] if scored else [])
    lines = ["<table class=\"sortable\" id=\"overview\"><thead><tr>"
             + "".join(f"<th>{escape(h)}</th>" for h in heads) + "</tr></thead><tbody>"]
    for i, s in order:
        summary = s.summary or {}
        frames = summary.get("frames") if s.summary else len(s.masks)
        cells = [(s.name, f'<a href="#seq-{i}">{escape(s.name)}</a>'), (s.status, escape(s.status)),
                 (frames, _num(frames)), (summary.get("frames_per_s"), _num(summary.get("frames_per_s"), 1)),
                 (len(summary.get("warnings") or []), _num(len(summary.get("warnings") or [])))]
        if scored:
            sc = s.scores or {}
            cells += [(sc.get("J_mean"), _num(sc.get("J_mean"))), (sc.get("F_mean"), _num(sc.get("F_mean"))),
                      (s.jf, _num(s.jf))]
        lines.append("<tr>" + "".join(f'<td data-v="{"" if v is None else escape(str(v))}">{shown}</td>'
                                      for v, shown in cells) + "</tr>")
    lines.append("</tbody></table>")
    if scored:
        lines.append('<p class="sub">Worst J&amp;F first; click a column to sort by it.</p>')
    return "\n".join(lines)


def _section(index: int, s: SequenceRun, images, more_notes, page_dir: Path) -> str:
    summary = s.summary or {}
    parts = [f'<section class="seq" id="seq-{index}">',
             f'<h3>{escape(s.name)}<span class="badge {s.status}">{escape(s.status)}</span></h3>']
    facts = []
    if s.summary:
        facts.append(f"{summary.get('frames')} frames")
        if summary.get("frames_per_s") is not None:
            facts.append(f"{summary['frames_per_s']:.1f} frames/s")
        total = (summary.get("seconds") or {}).get("total")
        if total is not None:
            facts.append(f"{total:.1f} s")
        if summary.get("frame_size"):
            facts.append("{}x{} px".format(*summary["frame_size"]))
        refs = [str(r.get("frame")) for r in summary.get("references") or [] if isinstance(r, dict)]
        if refs:
            facts.append(f"annotated {', '.join(refs)}")
        if summary.get("resumed_from"):
            facts.append(f"resumed at frame {summary['resumed_from']}")
        if summary.get("completed"):
            facts.append(f"completed {summary['completed']}")
    elif s.folder is not None:
        facts.append(f"{len(s.masks)} masks so far")
    if facts:
        parts.append(f'<p>{escape(" · ".join(facts))}</p>')
    row = []  # the strip, and the scores beside it where the page is wide enough
    if images:
        row.append('<div class="strip">' + "".join(
            f'<figure><img src="{escape(src)}" width="{w}" height="{h}" alt="{escape(s.name)} frame {escape(name)}">'
            f'<figcaption>{escape(name)}</figcaption></figure>' for name, src, (w, h) in images) + "</div>")
    if s.scores:
        row.append(_objects(s.scores))
    if row:
        parts.append('<div class="row">' + "".join(row) + "</div>")
    warnings = summary.get("warnings") or []
    if warnings:
        parts.append('<ul class="warn">' + "".join(f"<li>{escape(str(w))}</li>" for w in warnings) + "</ul>")
    notes = s.notes + list(more_notes)
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    links = outputs(s)
    if links:
        parts.append('<p class="links">' + "".join(f'<a href="{_href(path, page_dir)}">{escape(label)}</a>'
                                                   for label, path in links.items()) + "</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _objects(scores: dict) -> str:
    heads = ("object", "J mean", "J recall", "J decay", "F mean", "F recall", "F decay")
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>"]
    for obj, o in scores["objects"].items():
        rows.append(f"<tr><td>{escape(obj)}</td>" + "".join(
            f"<td>{_num(o[m][k])}</td>" for m in ("J", "F") for k in ("mean", "recall", "decay")) + "</tr>")
    rows.append(f"<tr><td>mean</td><td>{_num(scores['J_mean'])}</td><td></td><td></td>"
                f"<td>{_num(scores['F_mean'])}</td><td></td><td></td></tr>")
    return '<table class="objects">' + "".join(rows) + "</table>"


def _href(path: Path, page_dir: Path) -> str:
    """A link from the page's folder (a folder's link ends with /)."""
    rel = Path(os.path.relpath(Path(path).resolve(), page_dir.resolve())).as_posix()
    return escape(quote(rel) + ("/" if Path(path).is_dir() else ""))
