"""`coordgan report` and `propagate --report`: the page of real propagation runs (the controlled
encoder of propagate_helpers on a small DAVIS-layout dataset, and `coordgan demo`'s output), the
bad inputs, and the page opened from disk in a real headless chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_main
from propagate_helpers import G, frames_with_red, interrupt_after, objects, shift_encoder
from runtime.davis.evaluate import evaluate_sequence
from runtime.io.masks import DAVIS_PALETTE, write_mask

T = 6  # frames per sequence
SEQS = {"bear": True, "camel": False}  # camel's ground truth does not move with its frames: the worse one


def make_davis(root: Path, seqs=SEQS, size: int = 2 * G) -> Path:
    """A DAVIS root whose frames the shift encoder moves by 2 px per frame (at 2x the grid), every frame
    annotated; a sequence whose truth is False keeps the first mask: its propagated masks score worse."""
    block = size // G
    base = np.kron(objects(G), np.ones((block, block), np.uint8))
    frames = frames_with_red([16 * t for t in range(T)], size)
    for seq, moves in seqs.items():
        frame_dir, mask_dir = root / "JPEGImages/480p" / seq, root / "Annotations/480p" / seq
        frame_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        for t in range(T):
            Image.fromarray(frames[t]).save(frame_dir / f"{t:05d}.png")
            write_mask(mask_dir / f"{t:05d}.png", np.roll(base, block * t, axis=1) if moves else base, DAVIS_PALETTE)
    return root


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """The controlled encoder in an export folder with a manifest, as `coordgan export onnx` leaves one."""
    folder = tmp_path_factory.mktemp("export")
    shift_encoder(folder / "encoder.onnx")
    manifest = {"format": "coordgan-deploy-onnx/1", "preset": "shift-test", "opset": 17, "fp16": False,
                "checkpoint": {"path": "/ckpt/shift.safetensors", "sha256": "ab" * 32, "source": "test"},
                "tool_versions": {"coordgan-deploy": "0.1.0"}, "models": {"encoder": {"file": "encoder.onnx"}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "encoder.onnx"


def report(monkeypatch, capsys, *args):
    return run_main(monkeypatch, capsys, "report", *args)


def page_of(path: Path) -> str:
    return path.read_text()


def images_of(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def overview(html: str) -> list[tuple[str, str]]:
    """(sequence, J&F cell value) of the overview's rows, in page order."""
    body = html.split('id="overview"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<tr><td data-v="([^"]*)">.*?</tr>', body)
    jf = re.findall(r'<td data-v="([^"]*)">[^<]*</td></tr>', body)
    return list(zip(rows, jf))


def test_propagate_report_then_report_with_davis(encoder, tmp_path, monkeypatch, capsys):
    davis = make_davis(tmp_path / "davis")
    out = tmp_path / "out"
    code, stdout, err = run_main(monkeypatch, capsys, "propagate", davis, "--model", encoder, "--out", out,
                                 "--overlay", tmp_path / "overlay.mp4", "--report")
    assert code in (0, None), err
    page = out / "report.html"
    assert f"wrote {page} (2 sequences)" in stdout
    html = page_of(page)
    assert "preset shift-test" in html and "/ckpt/shift.safetensors" in html  # the export's manifest
    assert "not the encoder this run used" not in html
    assert [name for name, _ in overview(html)] == ["bear", "camel"]  # no ground truth: in name order
    assert "J&amp;F" not in html

    code, stdout, err = report(monkeypatch, capsys, out, "--davis", davis, "--frames", 3)
    assert code in (0, None), err
    html = page_of(page)
    scores = {seq: evaluate_sequence(out / seq, davis / "Annotations/480p" / seq) for seq in SEQS}
    jf = {seq: (s["J_mean"] + s["F_mean"]) / 2 for seq, s in scores.items()}
    assert jf["camel"] < jf["bear"] == 1.0
    assert [(name, float(v)) for name, v in overview(html)] == [("camel", jf["camel"]), ("bear", jf["bear"])]
    for obj in ("3", "7", "200"):  # per object, both sequences
        assert html.count(f"<tr><td>{obj}</td>") == 2
    assert "J&amp;F" in html and "table.sortable" in html
    # every image is a file beside the page, linked relatively; 3 frames per sequence: first, middle, last
    srcs = images_of(html)
    assert len(srcs) == 6 and all(s.startswith("report_files/") for s in srcs)
    for src in srcs:
        with Image.open(page.parent / src) as img:
            assert img.height == 128 and np.asarray(img).std() > 5  # a frame with its mask, not a blank tile
    assert re.findall(r'alt="bear frame (\d+)"', html) == ["00000", "00002", "00005"]
    assert "annotated 00000 · " in html
    assert 'href="bear/"' in html and 'href="../overlay_bear.mp4"' in html
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from anywhere
    # written again: the image folder replaced whole, no staging folder left behind
    code, _, err = report(monkeypatch, capsys, out)
    assert code in (0, None), err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert sorted(p.name for p in (out / "report_files").iterdir())[:2] == [".coordgan-report", "s000_0.jpg"]
    assert len(list((out / "report_files").iterdir())) == 11  # 10 images and the marker


def test_a_files_folder_that_no_report_made_is_never_replaced(encoder, tmp_path, monkeypatch, capsys):
    """`report --out ~/proj/data.html` must not delete ~/proj/data_files (someone's data)."""
    davis = make_davis(tmp_path / "davis", {"bear": True})
    out, proj = tmp_path / "out", tmp_path / "proj"
    code, _, err = run_main(monkeypatch, capsys, "propagate", davis, "--model", encoder, "--out", out)
    assert code in (0, None), err
    (proj / "data_files").mkdir(parents=True)
    (proj / "data_files" / "precious.csv").write_text("1,2,3\n")
    code, _, err = report(monkeypatch, capsys, out, "--out", proj / "data.html")
    assert code == 1 and err.count("\n") == 1, err
    assert f"{proj / 'data_files'} exists and no report made it" in err
    assert (proj / "data_files" / "precious.csv").read_text() == "1,2,3\n"
    assert sorted(p.name for p in proj.iterdir()) == ["data_files"]  # no page, no staging folder
    (proj / "data_files" / "precious.csv").unlink()  # an empty folder holds nothing to lose: used
    code, _, err = report(monkeypatch, capsys, out, "--out", proj / "data.html")
    assert code in (0, None), err
    assert (proj / "data_files" / ".coordgan-report").is_file() and (proj / "data.html").is_file()


def test_half_finished_run_is_drawn_as_far_as_it_got(encoder, tmp_path, monkeypatch, capsys):
    from runtime.propagation.jobs import plan, run_jobs
    from runtime.propagation.model import open_model
    from runtime.propagation.sequence import PropagateOptions, Reference, propagate_sequence
    from runtime.io.video import open_frames

    davis = make_davis(tmp_path / "davis")
    out = tmp_path / "out"
    jobs = plan(davis, out)
    with open_model(str(encoder)) as model:
        list(run_jobs(model, jobs[:1], PropagateOptions(batch=2)))
        with pytest.raises(KeyboardInterrupt):
            camel = jobs[1]
            propagate_sequence(model, open_frames(camel.frames), [Reference.from_png(camel.refs[0][1])],
                               camel.out_dir, PropagateOptions(batch=2), observer=interrupt_after(3))
    assert not (out / "camel" / "summary.json").exists() and len(list((out / "camel").glob("*.png"))) == 3
    code, stdout, err = report(monkeypatch, capsys, out, "--davis", davis)
    assert code in (0, None), err
    assert "incomplete sequences, drawn as far as they got: camel" in err
    html = page_of(out / "report.html")
    assert "Incomplete sequences (drawn as far as they got): camel." in html
    assert "3 masks written and no summary.json" in html and "not scored: the sequence is not complete" in html
    assert len([s for s in images_of(html) if s.startswith("report_files/s001_")]) == 3  # camel's 3 masks drawn
    assert [name for name, _ in overview(html)] == ["bear", "camel"]  # the scored one, then the unscored


def test_cluster_summary_in_the_header_and_a_failed_sequence(encoder, tmp_path, monkeypatch, capsys):
    from runtime.propagation.cluster import SUMMARY_FILE, ClusterResult, SequenceResult, summary_digest

    davis = make_davis(tmp_path / "davis", {"bear": True})
    out = tmp_path / "out"
    code, _, err = run_main(monkeypatch, capsys, "propagate", davis, "--model", encoder, "--out", out)
    assert code in (0, None), err
    bear = json.loads((out / "bear" / "summary.json").read_text())
    result = ClusterResult("local", 2, 1, 1.5, 3.25, [
        SequenceResult("bear", "done", attempts=2, worker=0, frames=T, frames_processed=T,
                       summary_digest=summary_digest(bear)),
        SequenceResult("dog", "failed", attempts=3, reason="Reference mask dog/00000.png is damaged.")])
    (out / SUMMARY_FILE).write_text(json.dumps(result.to_json()))  # as run_cluster writes it
    code, _, err = report(monkeypatch, capsys, out)
    assert code in (0, None), err
    html = page_of(out / "report.html")
    assert "Ray local: 2 workers x 1 thread, start-up 1.5 s, run 3.2 s" in html and "3 retries, 1 failed" in html  # 1 + 2 attempts more
    assert "Failed sequences: dog." in html and "failed: Reference mask dog/00000.png is damaged." in html
    assert [name for name, _ in overview(html)] == ["bear", "dog"]

    # a later run in the same folder (in-process, --overwrite) leaves cluster_summary.json behind: not this run's
    code, _, err = run_main(monkeypatch, capsys, "propagate", davis, "--model", encoder, "--out", out, "--overwrite")
    assert code in (0, None), err
    assert (out / SUMMARY_FILE).is_file()
    code, _, err = report(monkeypatch, capsys, out)
    assert code in (0, None), err
    html = page_of(out / "report.html")
    assert "Ray local" not in html and "retries" not in html and "dog" not in html
    assert [name for name, _ in overview(html)] == ["bear"]


def test_bad_inputs_are_one_sentence(encoder, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "00000.png").write_bytes(b"")  # PNGs, but no run of ours left them
    code, _, err = report(monkeypatch, capsys, empty)
    assert code == 1 and err.strip() == (f"Error: {empty} holds no propagation results (no summary.json of "
                                         "`coordgan propagate` in it or in its sequence folders).")
    assert not (empty / "report.html").exists()
    code, _, err = report(monkeypatch, capsys, tmp_path / "missing")
    assert code == 1 and "is not a folder" in err and err.count("\n") == 1

    davis = make_davis(tmp_path / "davis", {"bear": True})
    out = tmp_path / "out"
    code, _, err = run_main(monkeypatch, capsys, "propagate", davis, "--model", encoder, "--out", out)
    assert code in (0, None), err
    other = make_davis(tmp_path / "other", {"dog": True})
    code, _, err = report(monkeypatch, capsys, out, "--davis", other)
    assert code == 1 and err.count("\n") == 1
    assert f"--davis {other} has none of this run's sequences (bear)" in err
    bigger = make_davis(tmp_path / "bigger", {"bear": True}, size=4 * G)  # the same name, other frames
    code, _, err = report(monkeypatch, capsys, out, "--davis", bigger)
    assert code == 1 and err.count("\n") == 1
    assert f"--davis {bigger} does not match the run's sequence bear (Prediction" in err
    code, _, err = report(monkeypatch, capsys, out, "--model", tmp_path)
    assert code == 1 and f"--model {tmp_path} is not an export" in err
    assert not (out / "report.html").exists()
    other_export = tmp_path / "other_export"  # an export, but not of the encoder the run used: said on the page
    other_export.mkdir()
    shutil.copy(encoder.parent / "manifest.json", other_export)
    shift_encoder(other_export / "encoder.onnx", direction=(0, 1))
    code, _, err = report(monkeypatch, capsys, out, "--model", other_export)
    assert code in (0, None), err
    assert f"{other_export / 'encoder.onnx'} is not the encoder this run used" in page_of(out / "report.html")


def test_report_of_demo_output_scores_against_its_ground_truth(encoder, tmp_path, monkeypatch, capsys):
    from coordgan.demo import DemoOptions, run_demo
    from runtime.propagation.model import open_model

    out = tmp_path / "demo"
    with open_model(str(encoder)) as model:
        result = run_demo(model, out, DemoOptions(frames=5, size=64), checkpoint="shift.onnx")
    page = tmp_path / "pages" / "demo.html"  # elsewhere: its images beside it, links back to the run
    code, stdout, err = report(monkeypatch, capsys, out, "--model", encoder.parent, "--out", page)
    assert code in (0, None), err
    assert f"wrote {page} (1 sequence)" in stdout and not (out / "report.html").exists()
    html = page_of(page)
    assert "checkpoint shift.onnx, 5 frames of 64 px" in html
    j = float(overview(html)[0][1]) * 2 - result["propagated"]["F_mean"]
    assert j == pytest.approx(result["propagated"]["J_mean"])  # the demo's own numbers
    assert 'href="../demo/overlay.mp4"' in html and 'href="../demo/masks/"' in html
    srcs = images_of(html)
    assert len(srcs) == 5 and all((page.parent / s).is_file() and s.startswith("demo_files/") for s in srcs)


def test_one_video_run_scored_against_one_folder_of_masks(encoder, tmp_path, monkeypatch, capsys):
    """A video's run writes its masks into OUT itself; --davis may then be one folder of ground truth."""
    from runtime.io.video import VideoWriter

    davis = make_davis(tmp_path / "davis", {"bear": True})
    video = tmp_path / "clip.mp4"
    with VideoWriter(video, fps=10) as writer:
        for t in range(T):
            writer.write(np.asarray(Image.open(davis / f"JPEGImages/480p/bear/{t:05d}.png")))
    out, truth = tmp_path / "masks", davis / "Annotations/480p/bear"
    code, _, err = run_main(monkeypatch, capsys, "propagate", video, "--model", encoder, "--ref", truth / "00000.png",
                            "--out", out)
    assert code in (0, None), err
    code, _, err = report(monkeypatch, capsys, out, "--davis", truth)
    assert code in (0, None), err
    html = page_of(out / "report.html")
    assert [name for name, _ in overview(html)] == ["clip"]
    assert float(overview(html)[0][1]) == pytest.approx(
        sum(evaluate_sequence(out, truth)[k] for k in ("J_mean", "F_mean")) / 2)
    assert "frames not shown" not in html  # decoded from the video
    for src in images_of(html):
        with Image.open(out / src) as img:
            assert np.asarray(img)[..., 1].mean() > 60  # the grey frame under the masks, not masks on black


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (apt-get install chromium; .ci/run installs it)")
def test_report_opens_in_headless_chromium(encoder, tmp_path, monkeypatch, capsys):
    """From disk, no server: every image loads, the console stays silent, the screenshot shows a page."""
    davis = make_davis(tmp_path / "davis")
    out = tmp_path / "out"
    code, _, err = run_main(monkeypatch, capsys, "propagate", davis, "--model", encoder, "--out", out, "--report")
    assert code in (0, None), err
    code, _, err = report(monkeypatch, capsys, out, "--davis", davis)
    assert code in (0, None), err
    url = (out / "report.html").resolve().as_uri()
    browser = ["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    count = len(images_of(page_of(out / "report.html")))
    assert count == 10 and f'data-images="{count}/{count}"' in dom.stdout, dom.stdout[:500]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no script error, no message of any kind
    # the overview sorts in the browser: J&F clicked twice (descending) puts the better sequence first
    html = page_of(out / "report.html")
    click = '<script>var h = document.querySelectorAll("#overview th")[7]; h.click(); h.click();</script>'
    (out / "sorted.html").write_text(html.replace("</body>", click + "</body>"))
    dom = subprocess.run([*browser, "--dump-dom", (out / "sorted.html").resolve().as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert [name for name, _ in overview(html)] == ["camel", "bear"]  # worst first as written
    assert [name for name, _ in overview(dom.stdout)] == ["bear", "camel"], dom.stdout[-3000:]
    assert 'data-dir="desc"' in dom.stdout
    shot = tmp_path / "shot.png"
    run = subprocess.run([*browser, "--window-size=1000,800", f"--screenshot={shot}", url], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (800, 1000, 3)
    assert (pixels.min(axis=2) < 200).mean() > 0.03  # text and images, not a white page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # the thumbnails' colours
