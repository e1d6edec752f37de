"""Crash-safe jobs, end to end: a real daemon killed with SIGKILL and started again, real UDP, real files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import OscClient
from test_storage import tmpfs

from bridge.app.bridge import Bridge
from bridge.config import Config
from bridge.errors import StorageError

RATE = 32000  # tiny-random's


class Daemon:
    """``musicgen-bridge serve --model tiny-random`` as a child process.

    Port 0 lets the daemon pick a free port and ``port`` is the one it says it listens on (no
    check-then-bind race); a restart passes that port to listen where its clients already send.
    """

    def __init__(self, tmp_path: Path, port: int, reply_port: int, *extra: str) -> None:
        self.log = (tmp_path / f"serve-{time.monotonic_ns()}.log").open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "serve", "--model", "tiny-random", "--port", str(port),
             "--reply-port", str(reply_port), "--output-dir", str(tmp_path / "out"), *extra],
            stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        deadline = time.monotonic() + 120
        while "Ctrl-C stops" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the daemon did not start:\n{self.output()}")
            time.sleep(0.05)
        listening = re.search(r"on 127\.0\.0\.1:(\d+)", self.output())
        assert listening, f"the daemon did not say where it listens:\n{self.output()}"
        self.port = int(listening.group(1))

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def daemons(tmp_path):
    started: list[Daemon] = []

    def start(port: int, reply_port: int, *extra: str) -> Daemon:
        started.append(Daemon(tmp_path, port, reply_port, *extra))
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()


def _ends(client: OscClient, ids: set[str], timeout: float) -> dict[str, list]:
    """Every done/fail for ``ids`` that arrives within ``timeout`` (and a little after, to catch a second one)."""
    ends: dict[str, list] = {i: [] for i in ids}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(ends.values()):
        client._receive(min(deadline, time.monotonic() + 0.5))
        for message in client.drain(0):
            if message.address in ("/musicgen/done", "/musicgen/fail") and message.args[1] in ends:
                ends[message.args[1]].append(message)
    for message in client.drain(1.0):  # a duplicate would come right away
        if message.address in ("/musicgen/done", "/musicgen/fail") and message.args[1] in ends:
            ends[message.args[1]].append(message)
    return ends


def test_kill_9_with_jobs_queued_and_running_then_every_job_ends_once_to_its_requester(daemons, tmp_path):
    client = OscClient()  # the requester at the default reply port
    other = OscClient()  # a DAW script with its own port, registered with /musicgen/notify
    try:
        first = daemons(0, client.port)
        port = client.server_port = other.server_port = first.port
        other.register()
        ids = ["k1", "k2", "k3"]
        for job_id in ids:
            client.send("/musicgen/generate", job_id, "dusty keys", 20.0, "seed", 7)
            client.expect("/musicgen/queued", lambda m, j=job_id: m.args[0] == j, timeout=10)
        other.send("/musicgen/generate", "k4", "from my own port", 0.0, "bpm", 120.0, "bars", 2)
        other.expect("/musicgen/queued", lambda m: m.args[0] == "k4", timeout=10)
        client.expect("/musicgen/progress", lambda m: m.args[0] == "k1", timeout=60)  # k1 runs, the rest wait
        first.kill()
        state = tmp_path / "out.state" / "journal.jsonl"
        assert state.exists() and state.read_text().count('"type":"accepted"') == 4
        client.drain(0.2)
        other.drain(0.2)

        second = daemons(port, client.port)
        ends = _ends(client, set(ids), timeout=240)
        for job_id in ids:
            assert len(ends[job_id]) == 1, (job_id, ends[job_id], second.output())
            done = ends[job_id][0]
            assert done.address == "/musicgen/done" and done.args[0] == "/musicgen/generate"
            assert sf.info(done.args[2]).frames == 20 * RATE  # the asked length
        # the registered port was remembered in the journal: its job's end reaches it without registering again
        [end4] = _ends(other, {"k4"}, timeout=120)["k4"]
        assert end4.address == "/musicgen/done" and sf.info(end4.args[2]).frames == 4 * RATE  # 2 bars at 120 bpm
        # the same seed, so the result is the one that was asked: k2 and k3 asked the same, so they are equal
        a, b = (sf.read(ends[j][0].args[2])[0] for j in ("k2", "k3"))
        np.testing.assert_array_equal(a, b)
        client.send("/musicgen/job", "k1")
        job = client.expect("/musicgen/job", timeout=10)
        assert job.args[:3] == ("k1", "done", "/musicgen/generate")
        partial = [p for p in (tmp_path / "out").rglob(".partial-*")]
        assert partial == []  # nothing half written is left visible
    finally:
        client.close()
        other.close()


def test_fresh_start_tells_the_old_requesters_and_a_jam_is_not_resumed(daemons, tmp_path):
    client = OscClient()
    try:
        first = daemons(0, client.port)
        port = client.server_port = first.port
        client.send("/musicgen/jam/start", "jam1", "lofi", "play", 0, "bpm", 120.0, "bars", 1)
        client.expect("/musicgen/jam/segment", lambda m: m.args[0] == "jam1", timeout=120)
        client.send("/musicgen/generate", "after-jam", "keys", 1.0)
        client.expect("/musicgen/queued", lambda m: m.args[0] == "after-jam", timeout=10)
        first.kill()
        client.drain(0.2)

        daemons(port, client.port)  # not fresh: the jam is told, the job after it runs
        ends = _ends(client, {"jam1", "after-jam"}, timeout=120)
        [jam_end] = ends["jam1"]
        assert jam_end.address == "/musicgen/fail" and jam_end.args[2] == "cancelled"
        assert "a jam is not resumed" in jam_end.args[3]
        [job_end] = ends["after-jam"]
        assert job_end.address == "/musicgen/done"
    finally:
        client.close()


def test_fresh_flag_fails_the_interrupted_jobs_instead_of_running_them(daemons, tmp_path):
    client = OscClient()
    try:
        first = daemons(0, client.port)
        port = client.server_port = first.port
        for job_id in ("f1", "f2"):
            client.send("/musicgen/generate", job_id, "keys", 30.0)
            client.expect("/musicgen/queued", lambda m, j=job_id: m.args[0] == j, timeout=10)
        first.kill()
        client.drain(0.2)
        daemons(port, client.port, "--fresh")
        ends = _ends(client, {"f1", "f2"}, timeout=60)
        for job_id in ("f1", "f2"):
            [end] = ends[job_id]
            assert end.address == "/musicgen/fail" and end.args[2] == "cancelled" and "--fresh" in end.args[3]
        assert not list((tmp_path / "out").glob("*.wav"))  # nothing was generated for them
    finally:
        client.close()


def test_a_garbage_journal_is_moved_aside_in_one_line_and_the_daemon_starts(daemons, tmp_path):
    state = tmp_path / "out.state"
    state.mkdir()
    (state / "journal.jsonl").write_bytes(b"\x00\x01 not a journal at all\n{\"type\": \"accepted\"\n")
    client = OscClient()
    try:
        daemon = daemons(0, client.port)
        client.server_port = daemon.port
        client.send("/musicgen/ping")
        client.expect("/musicgen/pong", timeout=10)
        lines = [line for line in daemon.output().splitlines() if "journal" in line]
        assert len(lines) == 1 and "moved" in lines[0], daemon.output()
        assert list(state.glob("journal.jsonl.bad-*"))
        header = json.loads((state / "journal.jsonl").read_text().splitlines()[0])
        assert header["format"] == "musicgen-bridge-journal"
    finally:
        client.close()


def test_cli_refuses_an_unusable_output_folder_in_one_line_before_loading(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bridge.cli", "generate", "ok", "--seconds", "1", "--model",
                           "tiny-random", "--output-dir", "/proc/forbidden"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 9, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("musicgen-bridge: storage: ") and "Traceback" not in proc.stderr
    assert "loading" not in proc.stderr  # refused before the model was loaded


# -- a full disk and a folder that vanishes, on a real (small) filesystem ------------------------------


def test_a_disk_that_fills_mid_job_fails_that_job_clearly_and_the_next_one_works(tiny_engine, tmp_path):
    with tmpfs(tmp_path / "disk", "size=24m") as disk:
        bridge = Bridge(tiny_engine, Config(model="tiny-random", output_dir=disk / "out"))
        too_big = bridge.make_request("text", "keys", 120.0, None, {})  # 15 MB and the reserve do not fit
        with pytest.raises(StorageError, match="free some space") as refused:
            bridge.run("big", too_big, lambda _f: None, lambda: False)
        assert refused.value.code == "storage"
        small = bridge.make_request("text", "keys", 1.0, None, {})
        filler = disk / "filler"
        original = bridge.renderer.render

        def render_then_fill(*args, **kwargs):
            outputs = original(*args, **kwargs)
            with filler.open("wb") as f:  # another program fills the disk while the job runs
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                except OSError:
                    pass
            return outputs

        bridge.renderer.render = render_then_fill  # type: ignore[method-assign]
        with pytest.raises(StorageError, match="disk is full"):
            bridge.run("mid", small, lambda _f: None, lambda: False)
        assert not [p for p in (disk / "out").iterdir() if p.name.startswith(".partial-")]
        bridge.renderer.render = original  # type: ignore[method-assign]
        filler.unlink()
        result = bridge.run("next", small, lambda _f: None, lambda: False)
        assert sf.info(result.paths[0]).frames == RATE


def test_a_removed_output_folder_is_made_again_for_the_job(tiny_bridge):
    request = tiny_bridge.make_request("text", "keys", 0.5, None, {})
    original = tiny_bridge.renderer.render

    def render_then_remove(*args, **kwargs):
        outputs = original(*args, **kwargs)
        import shutil

        shutil.rmtree(tiny_bridge.output_dir, ignore_errors=True)  # the user deleted the folder mid-job
        return outputs

    tiny_bridge.renderer.render = render_then_remove  # type: ignore[method-assign]
    result = tiny_bridge.run("gone", request, lambda _f: None, lambda: False)
    assert result.paths[0].exists() and sf.info(result.paths[0]).frames == RATE // 2
    assert os.path.isdir(tiny_bridge.output_dir)
