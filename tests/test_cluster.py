"""`coordgan propagate --cluster` on a real Ray instance on this machine (loopback only), tiny-preset exports.

One head started with `ray start --head --block` serves most tests (Ray takes 4-10 s to start);
one test runs `--cluster local`, the embedded instance the command starts and stops itself.
The reference everywhere is the in-process run (no --cluster): the same mask bytes are expected.
"""

import contextlib
import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import run_main
from coordgan.data.synthetic_faces import make_sequence
from export_helpers import export_tiny
from net_helpers import free_port
from runtime.io.masks import DAVIS_PALETTE, write_mask

SIZE, BATCH = 64, 4
SHORT = {f"s{i}": 6 + i for i in range(6)}  # six sequences of 6..11 frames
LONG = {"long0": 160, "long1": 120}  # long enough to be stopped part-way on a busy machine (48 frames ran out)


@pytest.fixture(scope="module", autouse=True)
def ray_env(tmp_path_factory):
    """What the command sets for itself, set for the head too; a token of the tests' own (not ~/.ray)."""
    token = tmp_path_factory.mktemp("ray") / "auth_token"
    token.write_text(secrets.token_hex(32))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("COORDGAN_CACHE", str(tmp_path_factory.mktemp("cache")))  # the workers' remembered trials too
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("model"))


def davis_root(root: Path, lengths: dict, bad: str | None = None) -> Path:
    """A DAVIS layout of synthetic faces (first frame annotated); `bad`: that sequence's mask is no PNG."""
    for i, (seq, n) in enumerate(sorted(lengths.items())):
        frames, masks = make_sequence(n, SIZE, seed=10 + i)
        images, notes = root / "JPEGImages" / "480p" / seq, root / "Annotations" / "480p" / seq
        images.mkdir(parents=True)
        notes.mkdir(parents=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(images / f"{t:05d}.jpg")
        if seq == bad:
            (notes / "00000.png").write_bytes(b"not a png")
        else:
            write_mask(notes / "00000.png", masks[0], DAVIS_PALETTE)
    return root


def in_process(model, root, out, backend=None):
    """The path without --cluster, through the same library calls the command makes."""
    from runtime.propagation.jobs import plan, run_jobs
    from runtime.propagation.model import open_model
    from runtime.propagation.sequence import PropagateOptions

    with open_model(str(model / "encoder.onnx"), backend=backend, device="cpu", batch=BATCH) as m:
        return dict((job.name, summary) for job, summary in run_jobs(m, plan(root, out), PropagateOptions(batch=BATCH)))


@pytest.fixture(scope="module")
def long_data(model, tmp_path_factory):
    root = davis_root(tmp_path_factory.mktemp("long"), LONG)
    reference = tmp_path_factory.mktemp("long_ref")
    return root, reference, in_process(model, root, reference, backend="onnxruntime")  # as the fault tests pin it


@pytest.fixture(scope="module")
def head(ray_env, tmp_path_factory):
    """A Ray head on 127.0.0.1 for the module; (address, process). Stopped through its own process (a
    `ray stop` would end every Ray process of the machine, other people's too)."""
    port = free_port()
    log = tmp_path_factory.mktemp("head") / "head.log"
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--ray-client-server-port", str(free_port()), "--num-cpus", "2",
           "--object-store-memory", str(200 << 20), "--include-dashboard", "false", "--disable-usage-stats"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray start --head did not come up: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}", proc
    finally:
        proc.terminate()  # the head drains and stops the processes it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def descendants(root: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = {root}, {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def listening(root: int) -> list[tuple[str, str]]:
    """(local address, process) of every TCP socket that `root` or a process below it listens on."""
    pids = descendants(root)
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append((line.split()[3], ",".join(re.findall(r'\("([^"]+)"', line))))
    return found


def on_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host.startswith("::ffff:127.") or host == "::1"


def worker_processes(root: int) -> list[int]:
    """Our Ray workers among `root`'s processes (Ray names an actor's process after its class)."""
    found = []
    for pid in descendants(root):
        try:
            if b"_Worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:  # ended meanwhile
            pass
    return found


def pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def without_timings(summary: dict) -> dict:
    """A summary less what differs between any two runs: times, the output folder, and the model's
    description past its backend's name (it may quote the backend choice's timed trial)."""
    kept = {k: v for k, v in summary.items() if k not in ("seconds", "frames_per_s", "completed", "outputs", "model")}
    return {**kept, "backend": summary["model"].split()[0]}


def test_six_sequences_on_a_local_instance_give_the_in_process_bytes_and_stay_on_loopback(
        model, tmp_path, monkeypatch, capsys):
    root = davis_root(tmp_path / "davis", SHORT)
    code, _, err = run_main(monkeypatch, capsys, "propagate", root, "--model", model, "--out", tmp_path / "ref",
                            "--batch", BATCH, "--device", "cpu")
    assert code == 0, err
    seen, stop = [], threading.Event()

    def watch():  # every port the embedded instance opens, while it runs (its processes are ours)
        while not stop.is_set():
            seen.extend(listening(os.getpid()))
            stop.wait(0.3)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        code, _, err = run_main(monkeypatch, capsys, "propagate", root, "--model", model, "--out", tmp_path / "out",
                                "--batch", BATCH, "--device", "cpu", "--cluster", "local", "--workers", "2")
    finally:
        stop.set()
        watcher.join()
    assert code == 0, err
    assert pngs(tmp_path / "out") == pngs(tmp_path / "ref") and len(pngs(tmp_path / "ref")) == sum(SHORT.values())
    for seq in SHORT:
        ours, theirs = (json.loads((tmp_path / d / seq / "summary.json").read_text()) for d in ("out", "ref"))
        assert without_timings(ours) == without_timings(theirs)
    record = json.loads((tmp_path / "out" / "cluster_summary.json").read_text())
    rows = {r["sequence"]: r for r in record["sequences"]}
    assert record["workers"] == 2 and record["failed"] == 0 and record["frames_processed"] == sum(SHORT.values())
    assert [r["sequence"] for r in record["sequences"]] == sorted(SHORT, key=lambda s: -SHORT[s])  # longest first
    assert all(r["status"] == "done" and r["attempts"] == 1 and r["frames"] == SHORT[s] for s, r in rows.items())
    assert {r["worker"] for r in rows.values()} == {0, 1} and len({r["pid"] for r in rows.values()}) == 2
    assert "cluster run" in err and "s5" in err
    ray_ports = [(a, p) for a, p in seen if p in ("gcs_server", "raylet")]
    assert ray_ports, f"the watcher saw none of the instance's ports: {seen}"
    assert all(on_loopback(a) for a, _ in seen), f"listening beyond loopback: {seen}"


def test_the_head_listens_on_loopback_only(head, model, tmp_path):
    from runtime.propagation.cluster import ClusterOptions, ModelSpec, run_cluster
    from runtime.propagation.jobs import plan
    from runtime.propagation.sequence import PropagateOptions

    address, proc = head
    root = davis_root(tmp_path / "davis", {"a": 4})

    result = run_cluster(plan(root, tmp_path / "out"), PropagateOptions(batch=BATCH),
                         ModelSpec(str(model / "encoder.onnx"), device="cpu", batch=BATCH),
                         ClusterOptions(address, workers=1), tmp_path / "out")
    assert [r.status for r in result.sequences] == ["done"]
    ports = listening(proc.pid)
    assert any(p == "gcs_server" for _, p in ports), ports
    assert all(on_loopback(a) for a, _ in ports), f"listening beyond loopback: {ports}"


def test_a_worker_killed_mid_sequence_is_restarted_and_its_sequence_resumes_to_the_same_bytes(
        head, model, long_data, tmp_path):
    from runtime.propagation.cluster import ClusterObserver, ClusterOptions, ModelSpec, run_cluster
    from runtime.propagation.jobs import plan
    from runtime.propagation.sequence import PropagateOptions

    root, reference, summaries = long_data
    killed = []

    class KillOnce(ClusterObserver):
        def progress(self, p):
            entry = p.running.get("long0")
            if not killed and entry and entry["done"] >= 2 * BATCH:
                os.kill(entry["pid"], signal.SIGKILL)
                killed.append(entry)

    out = tmp_path / "out"
    # onnxruntime, as the other fault tests: auto may pick the faster backend, done before the kill lands
    result = run_cluster(plan(root, out), PropagateOptions(batch=BATCH),
                         ModelSpec(str(model / "encoder.onnx"), backend="onnxruntime", device="cpu", batch=BATCH),
                         ClusterOptions(head[0], workers=2, max_retries=1), out, observer=KillOnce())
    assert killed and killed[0]["done"] < LONG["long0"]
    rows = {r.sequence: r for r in result.sequences}
    assert rows["long0"].status == "done" and rows["long0"].attempts == 2 and rows["long0"].resumed_from > 0
    assert rows["long1"].status == "done" and rows["long1"].attempts == 1
    assert pngs(out) == pngs(reference)
    ours = json.loads((out / "long0" / "summary.json").read_text())
    assert ours["resumed_from"] == rows["long0"].resumed_from
    assert ours["warnings"] == summaries["long0"]["warnings"]  # notes kept in the resume state
    assert not list((out / "long0").rglob("*.tmp")), "the killed writer's temp files are still there"
    record = json.loads((out / "cluster_summary.json").read_text())
    assert {r["sequence"]: r["attempts"] for r in record["sequences"]} == {"long0": 2, "long1": 1}


class KillAndHold:
    """A ClusterObserver (by its two methods) that, once long0 is 2 batches in, has another process take long0's folder lock
    (blocking until the killed worker's lock is gone with it) and hold it for `hold_s`, then kills the
    worker: as an earlier attempt on a cut-off node, or on a worker Ray only lost touch with, would
    still hold it when the retry comes."""

    def __init__(self, out: Path, hold_s: float):
        self.out, self.hold_s, self.holder = out, hold_s, []

    def progress(self, p):
        from runtime.propagation.output import LOCK_FILE

        entry = p.running.get("long0")
        if not self.holder and entry and entry["done"] >= 2 * BATCH:
            self.holder.append(subprocess.Popen(
                [sys.executable, "-c", "import fcntl, os, time\n"
                 f"fd = os.open({str(self.out / 'long0' / LOCK_FILE)!r}, os.O_RDWR)\n"
                 f"fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep({self.hold_s})"],
                stdout=subprocess.PIPE, text=True))
            os.kill(entry["pid"], signal.SIGKILL)
            assert self.holder[0].stdout.readline().strip() == "held"  # before the driver can give it again

    def finished(self, r):
        pass

    def run(self, head, model, root, **options):
        from runtime.propagation.cluster import ClusterOptions, ModelSpec, run_cluster
        from runtime.propagation.jobs import plan
        from runtime.propagation.sequence import PropagateOptions

        try:
            result = run_cluster(plan(root, self.out), PropagateOptions(batch=BATCH),
                                 ModelSpec(str(model / "encoder.onnx"), "onnxruntime", "cpu", BATCH),  # one backend on every worker
                                 ClusterOptions(head[0], workers=2, max_retries=1, **options), self.out, observer=self)
        finally:
            for proc in self.holder:
                proc.kill()
                proc.wait()
        assert self.holder
        return {r.sequence: r for r in result.sequences}


def test_a_retry_that_finds_the_folder_still_locked_waits_for_it_instead_of_failing(head, model, long_data, tmp_path):
    """The lock is let go 3 s after the kill: the retry goes again until it gets the lock, then resumes."""
    root, reference, _ = long_data
    rows = KillAndHold(tmp_path / "out", 3).run(head, model, root)
    assert rows["long0"].status == "done", rows["long0"].reason
    assert rows["long0"].attempts == 2 and rows["long0"].resumed_from > 0  # the refused calls are no attempts
    assert pngs(tmp_path / "out") == pngs(reference)


def test_a_retry_refused_by_the_lock_for_longer_than_wait_s_fails_with_that_reason(head, model, long_data, tmp_path):
    """The lock is held past wait_s (1.5 s here): the sequence fails, saying so, and the other finishes;
    its folder is left resumable (no summary.json)."""
    root, reference, _ = long_data
    started = time.monotonic()
    rows = KillAndHold(tmp_path / "out", 600).run(head, model, root, wait_s=1.5)
    assert time.monotonic() - started < 300  # not held up until the lock was let go
    assert rows["long0"].status == "failed" and rows["long0"].attempts == 2
    assert re.search(r"\(a retry waited \d+ s for an earlier attempt to let go of it\)$", rows["long0"].reason), \
        rows["long0"].reason
    assert rows["long1"].status == "done"
    assert not (tmp_path / "out" / "long0" / "summary.json").exists()
    assert pngs(tmp_path / "out" / "long1") == pngs(reference / "long1")


def sever(pid: int) -> int:
    """Cut this process's TCP connections to the worker `pid` (ss -K, as a network blip would): Ray then
    says ActorUnavailableError while the worker goes on. The count of connections cut."""
    listening_ports = {line.split()[3].rsplit(":", 1)[1] for line in subprocess.run(
        ["ss", "-Hltnp"], capture_output=True, text=True).stdout.splitlines() if f"pid={pid}," in line}
    cut = 0
    for line in subprocess.run(["ss", "-Htnp", "state", "established"], capture_output=True,
                               text=True).stdout.splitlines():
        local, peer = line.split()[2:4]
        if f"pid={os.getpid()}," in line and peer.rsplit(":", 1)[1] in listening_ports:
            run = subprocess.run(["ss", "-HK", "src", local.rsplit(":", 1)[0], "sport", "=", ":" +
                                  local.rsplit(":", 1)[1], "dport", "=", ":" + peer.rsplit(":", 1)[1]],
                                 capture_output=True, text=True)
            cut += len(run.stdout.splitlines())
    return cut


def test_a_worker_only_unreachable_is_waited_for_and_its_sequence_is_not_run_twice(head, model, tmp_path):
    """The driver's connection to a worker is cut early in a long sequence: about 2 s later Ray says
    ActorUnavailableError (a subclass of RayActorError) while the worker goes on. The sequence is given
    again only once that worker has answered, i.e. its attempt ended: the retry finds it complete. (Taken
    for a dead worker, the retry went at once to the other, idle, worker and stopped at the lock the first
    attempt still held: failed.)"""
    from runtime.propagation.cluster import ClusterObserver, ClusterOptions, ModelSpec, run_cluster
    from runtime.propagation.jobs import plan
    from runtime.propagation.sequence import PropagateOptions

    root = davis_root(tmp_path / "davis", {"long": 300, "z": 3})
    out = tmp_path / "out"
    cut = []

    class Sever(ClusterObserver):
        def progress(self, p):
            entry = p.running.get("long")
            if not cut and entry and entry["done"] >= BATCH:
                cut.append(sever(entry["pid"]))

    result = run_cluster(plan(root, out), PropagateOptions(batch=BATCH),
                         ModelSpec(str(model / "encoder.onnx"), "onnxruntime", "cpu", BATCH),  # one backend on every worker
                         ClusterOptions(head[0], workers=2, max_retries=1), out, observer=Sever())
    if cut == [0]:
        pytest.skip("ss -K cut no connection here (it needs CAP_NET_ADMIN and the kernel's sock_destroy)")
    rows = {r.sequence: r for r in result.sequences}
    assert rows["long"].status == "done", rows["long"].reason
    assert rows["long"].attempts == 2, "the cut connection went unnoticed"
    # the first attempt did it all; the retry found it complete
    assert rows["long"].frames_processed == 300 and not rows["long"].resumed_from and rows["z"].status == "done"
    assert len(list((out / "long").glob("*.png"))) == 300 and (out / "long" / "summary.json").is_file()


def test_a_bad_mask_fails_its_sequence_alone_on_a_head_given_by_address(head, model, tmp_path, monkeypatch, capsys):
    root = davis_root(tmp_path / "davis", {"a": 4, "b": 5, "c": 4}, bad="b")
    out = tmp_path / "out"
    code, stdout, err = run_main(monkeypatch, capsys, "propagate", root, "--model", model, "--out", out, "--batch",
                                 BATCH, "--device", "cpu", "--cluster", head[0], "--workers", "2", "--report")
    assert code == 1
    assert "1 of 3 sequences failed" in err and "00000.png" in err
    assert err.rstrip().endswith("run again with --resume.")  # the failure's sentence, after the report
    # --report: the page is written anyway and shows the failed sequence beside the others
    assert f"wrote {out / 'report.html'} (3 sequences)" in stdout
    html = (out / "report.html").read_text()
    assert "Failed sequences: b." in html and "Ray 127.0.0.1" in html and "1 failed" in html
    assert (out / "a" / "summary.json").is_file() and (out / "c" / "summary.json").is_file()
    record = json.loads((out / "cluster_summary.json").read_text())
    rows = {r["sequence"]: r for r in record["sequences"]}
    assert rows["b"]["status"] == "failed" and rows["b"]["attempts"] == 1 and "00000.png" in rows["b"]["reason"]
    assert rows["a"]["status"] == rows["c"]["status"] == "done" and record["failed"] == 1


def test_ctrl_c_stops_the_workers_and_resume_finishes_with_the_same_bytes(head, model, long_data, tmp_path,
                                                                         monkeypatch, capsys):
    root, reference, _ = long_data
    out = tmp_path / "out"
    args = ["propagate", root, "--model", model, "--out", out, "--batch", BATCH, "--device", "cpu",
            "--backend", "onnxruntime", "--cluster", head[0], "--workers", "2"]
    code = "import sys; sys.argv = ['coordgan', *sys.argv[1:]]; from coordgan.cli import main; main()"
    driver = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        seq = out / "long0"
        while not (len(list(seq.glob("*.png"))) >= 2 * BATCH and not (seq / "summary.json").exists()):
            assert driver.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
            time.sleep(0.05)
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130 and "Interrupted." in err
    deadline = time.monotonic() + 20
    while worker_processes(head[1].pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not worker_processes(head[1].pid), "a worker outlived the driver's Ctrl-C"
    assert not (out / "long0" / "summary.json").exists()
    code, _, err = run_main(monkeypatch, capsys, *args, "--resume")
    assert code == 0, err
    assert pngs(out) == pngs(reference)
    rows = {r["sequence"]: r for r in json.loads((out / "cluster_summary.json").read_text())["sequences"]}
    assert rows["long0"]["resumed_from"] > 0 and rows["long0"]["attempts"] == 1


def test_an_unreachable_address_is_one_sentence_within_seconds(model, tmp_path, monkeypatch, capsys):
    root = davis_root(tmp_path / "davis", {"a": 3})
    port = free_port()  # bound and closed: nothing listens there
    tick = time.monotonic()
    code, _, err = run_main(monkeypatch, capsys, "propagate", root, "--model", model, "--out", tmp_path / "out",
                            "--cluster", f"127.0.0.1:{port}")
    assert code == 1 and time.monotonic() - tick < 15
    assert f"Cannot reach a Ray cluster at 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1


def test_a_local_instance_that_does_not_start_is_one_sentence(model, tmp_path, monkeypatch, capsys):
    root = davis_root(tmp_path / "davis", {"a": 3})
    (tmp_path / "tmp").write_text("")  # Ray's temp folder a file: Ray refuses at once
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    code, _, err = run_main(monkeypatch, capsys, "propagate", root, "--model", model, "--out", tmp_path / "out",
                            "--device", "cpu", "--cluster", "local")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"Error: Cannot start a local Ray instance: {tmp_path / 'tmp'}" in err and "Not a directory." in err
    monkeypatch.delenv("RAY_TMPDIR")
    # an error that is no OSError (a traceback before): an object store below Ray's minimum
    from runtime.errors import CoordGANError
    from runtime.propagation.cluster import ClusterOptions, ModelSpec, run_cluster
    from runtime.propagation.jobs import plan
    from runtime.propagation.sequence import PropagateOptions

    before = descendants(os.getpid())
    try:
        with pytest.raises(CoordGANError, match=r"^Cannot start a local Ray instance: Attempting to cap object store "
                                                r"memory usage at 1048576 bytes, but the minimum allowed is \d+ bytes\.$"):
            run_cluster(plan(root, tmp_path / "out"), PropagateOptions(), ModelSpec(str(model / "encoder.onnx")),
                        ClusterOptions("local", object_store_mb=1), tmp_path / "out")
    finally:  # Ray had started its GCS before it refused, and lost it: ended here (it would end with pytest)
        for pid in descendants(os.getpid()) - before - {os.getpid()}:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    import ray
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def test_without_cluster_ray_is_never_imported_and_without_ray_cluster_says_how_to_install(model, tmp_path):
    root = davis_root(tmp_path / "davis", {"a": 3})
    script = f"""
import sys
sys.modules["ray"] = None  # as if not installed: any import of it fails
from coordgan.cli import main
for extra in ([], ["--cluster", "local"]):
    sys.argv = ["coordgan", "propagate", {str(root)!r}, "--model", {str(model)!r}, "--out", {str(tmp_path / 'out')!r},
                "--device", "cpu", "--resume", *extra]
    try:
        main()
    except SystemExit as exit:
        print("exit", exit.code, flush=True)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.stdout.splitlines() == ["exit 0", "exit 1"], run
    assert (tmp_path / "out" / "a" / "summary.json").is_file()
    assert "--cluster needs Ray, which is not installed: pip install 'coordgan-deploy[cluster]'" in run.stderr


def test_cluster_options_without_cluster_are_refused(model, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "propagate", tmp_path, "--model", model, "--out", tmp_path / "o",
                            "--workers", "2")
    assert code == 1 and "apply with --cluster" in err


def test_a_model_the_workers_cannot_open_is_one_sentence(head, tmp_path, monkeypatch, capsys):
    root = davis_root(tmp_path / "davis", {"a": 3})
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx model")
    args = ["propagate", root, "--model", tmp_path / "broken.onnx", "--out", tmp_path / "out", "--device", "cpu",
            "--cluster", head[0], "--workers", "1"]
    code, _, err = run_main(monkeypatch, capsys, *args, "--backend", "onnxruntime")  # opened by the workers only
    assert code == 1
    assert re.search(r"Error: Worker 0 could not open the model \S*broken.onnx: ONNX Runtime cannot load", err), err
    assert "Traceback" not in err and not (tmp_path / "out" / "a").exists()
    code, _, err = run_main(monkeypatch, capsys, *args)  # auto: the task that decides it opens it first
    last = err.rstrip("\n").split("\n")[-1]  # (after the start-up display)
    assert code == 1 and last.startswith("Error: ONNX Runtime cannot load") and "Traceback" not in err, err


def test_auto_joins_the_cluster_that_ray_address_names(head, model, tmp_path, monkeypatch, capsys):
    root = davis_root(tmp_path / "davis", {"a": 3})
    monkeypatch.setenv("RAY_ADDRESS", head[0])
    code, _, err = run_main(monkeypatch, capsys, "propagate", root, "--model", model, "--out", tmp_path / "out",
                            "--device", "cpu", "--cluster", "auto")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "cluster_summary.json").read_text())
    assert record["address"] == "auto" and [r["status"] for r in record["sequences"]] == ["done"]
    assert f"encoder: {record['backend']} ({record['backend_note']})" in err  # how auto chose, said


def test_a_cluster_too_small_for_one_worker_is_one_sentence_not_a_wait(head, model, tmp_path):
    """auto's choice runs as a task with a worker's resources: asked for more CPUs than the cluster has,
    the run is refused first, instead of waiting for ever for that task to be placed."""
    from runtime.errors import CoordGANError
    from runtime.propagation.cluster import ClusterOptions, ModelSpec, run_cluster
    from runtime.propagation.jobs import plan
    from runtime.propagation.sequence import PropagateOptions

    def waited(*_):
        raise TimeoutError("the run waited for a worker that cannot be placed")

    root, out = davis_root(tmp_path / "davis", {"a": 3}), tmp_path / "out"
    previous = signal.signal(signal.SIGALRM, waited)
    signal.alarm(120)
    try:
        with pytest.raises(CoordGANError, match=r"has 2 CPUs and 0 GPUs: not enough for one worker of 4 CPUs"):
            run_cluster(plan(root, out), PropagateOptions(batch=BATCH), ModelSpec(str(model / "encoder.onnx")),
                        ClusterOptions(head[0], cpus_per_worker=4), out)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_auto_is_decided_once_on_a_worker_for_every_worker(head, model, tmp_path, monkeypatch):
    """Each worker's own trial could pick another backend than its neighbour, and a retry on the other
    worker would then be refused by the resume fingerprint: one backend is named for all. It is decided
    on a worker (the driver may be another kind of machine than the nodes), remembered there, and said
    in cluster_summary.json."""
    import runtime.backends.auto as auto
    from runtime.propagation.cluster import ClusterOptions, ModelSpec, _settled_backend, run_cluster
    from runtime.propagation.jobs import plan
    from runtime.propagation.sequence import PropagateOptions

    def on_the_driver(*args, **kwargs):
        raise AssertionError("auto was decided on the driver")

    monkeypatch.setattr(auto, "open_auto", on_the_driver)
    onnx = str(model / "encoder.onnx")
    root = davis_root(tmp_path / "davis", {"a": 3, "b": 4})
    notes = []
    for run in ("first", "second"):
        out = tmp_path / run
        result = run_cluster(plan(root, out), PropagateOptions(batch=BATCH), ModelSpec(onnx, batch=BATCH),
                             ClusterOptions(head[0], workers=2), out)
        assert not result.failed and result.backend in ("onnxruntime", "openvino")
        opened = {json.loads((out / seq / "summary.json").read_text())["model"].split()[0] for seq in "ab"}
        assert opened == {result.backend}  # both workers opened the one backend
        record = json.loads((out / "cluster_summary.json").read_text())
        assert (record["backend"], record["backend_note"]) == (result.backend, result.backend_note)
        notes.append(result.backend_note)
    node = r", on \S+ \(127\.0\.0\.1\)"
    if importlib.util.find_spec("openvino") is None:  # one backend: nothing to time
        assert all(re.fullmatch(r"auto: onnxruntime; openvino skipped: .*" + node, n) for n in notes), notes
    else:  # (an earlier test of this module may have had the trial made already)
        assert re.fullmatch(r"auto: fastest of onnxruntime .* ms per batch of 4 \((remembered )?trial\)" + node,
                            notes[0]), notes[0]
        assert "(remembered trial)" in notes[1]  # the node remembered its trial: no second one
    # no trial, and no task, where auto needs none
    assert _settled_backend(None, ModelSpec(onnx), ClusterOptions(gpus_per_worker=1)) == ("onnxruntime", None)
    assert _settled_backend(None, ModelSpec(onnx, backend="openvino"), ClusterOptions()) == ("openvino", None)
    assert _settled_backend(None, ModelSpec("triton://127.0.0.1:1/enc"), ClusterOptions()) == (None, None)
