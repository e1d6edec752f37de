"""A slow disk never stalls the OSC loop: accepting a job journals it off that thread, and journaled comes before queued.

Issue 18: the journal's fsync is held (a disk that takes its time) while real UDP clients talk to a
real OscServer in front of a real JobQueue and Journal.
"""

from __future__ import annotations

import threading

from conftest import OscClient, stand_in_app

from bridge.app import journal as journal_module
from bridge.app.journal import Journal
from bridge.config import Config
from bridge.frontends.osc.server import OscServer


class SlowDisk:
    """Stands in for ``os.fsync`` on a disk that answers only when told to."""

    def __init__(self) -> None:
        self.waiting = threading.Event()
        self.go = threading.Event()
        self.synced = 0
        self.hold = False

    def __call__(self, fd: int) -> None:
        if self.hold:
            self.waiting.set()
            self.go.wait(60)
        self.synced += 1


def test_a_slow_fsync_does_not_stall_other_clients_and_queued_waits_for_it(fake_bridge, tmp_path, monkeypatch):
    disk = SlowDisk()
    monkeypatch.setattr(journal_module, "_fsync", disk)
    journal = Journal(tmp_path / "state")
    journal.open()
    requester, other = OscClient(), OscClient()
    config = Config(model="fake-model", port=0, reply_port=requester.port, output_dir=tmp_path / "out")
    app = stand_in_app(config, fake_bridge, journal=journal)
    server = OscServer(app, config)
    server.start()
    requester.server_port = other.server_port = server.port
    try:
        other.register()  # another DAW script on this host, with its own port
        disk.hold = True
        requester.send("/musicgen/generate", "slow-disk", "keys", 0.5)
        assert disk.waiting.wait(10)  # the job's accepted record is being fsynced, and the disk holds it
        other.send("/musicgen/ping")
        other.expect("/musicgen/pong", timeout=10)  # the OSC loop is free meanwhile
        other.send("/musicgen/status")
        status = other.expect("/musicgen/status", timeout=10)  # and the queue's lock too
        assert status.args[3] == 1  # the job is counted as waiting
        assert not [m for m in requester.drain(0.2) if m.address == "/musicgen/queued"]  # not before it is on disk
        disk.hold = False
        disk.go.set()
        requester.expect("/musicgen/queued", lambda m: m.args[0] == "slow-disk", timeout=10)
        assert journal.find("slow-disk") is not None
        requester.expect_end("slow-disk", timeout=30)
        finished = journal.find("slow-disk")
        assert finished is not None and finished.state == "done"
    finally:
        disk.go.set()
        server.stop(timeout=5)
        journal.close()
        requester.close()
        other.close()


def test_a_disk_that_refuses_the_journal_ends_the_job_with_fail_storage(fake_bridge, tmp_path, monkeypatch):
    def refuse(fd: int) -> None:
        raise OSError(28, "No space left on device")

    journal = Journal(tmp_path / "state")
    journal.open()
    monkeypatch.setattr(journal_module, "_fsync", refuse)
    client = OscClient()
    config = Config(model="fake-model", port=0, reply_port=client.port, output_dir=tmp_path / "out")
    server = OscServer(stand_in_app(config, fake_bridge, journal=journal), config)
    server.start()
    client.server_port = server.port
    try:
        client.send("/musicgen/generate", "full-disk", "keys", 0.5)
        fail = client.expect("/musicgen/fail", lambda m: m.args[1] == "full-disk", timeout=10)
        assert fail.args[2] == "storage" and "--state-dir" in fail.args[3]
        assert not [m for m in client.drain(0.3) if m.address in ("/musicgen/queued", "/musicgen/done")]
        client.send("/musicgen/ping")
        client.expect("/musicgen/pong", timeout=10)
    finally:
        server.stop(timeout=5)
        journal.close()
        client.close()
