"""The daemon driven by an outside OSC implementation: liblo's ``oscsend``, replies read with ``oscdump``."""

from __future__ import annotations

import contextlib
import os
import queue
import shlex
import shutil
import subprocess
import threading
import time

import pytest
import soundfile as sf

pytestmark = pytest.mark.skipif(
    shutil.which("oscsend") is None or shutil.which("oscdump") is None,
    reason="liblo's oscsend/oscdump are not installed (Debian: apt-get install liblo-tools)",
)


def bound_udp_port(pid: int, timeout: float = 30.0) -> int:
    """The UDP port process ``pid`` has bound, read from the kernel's socket table once it has bound one.

    The process picks the port itself (port 0), so nothing can take it between a check and a bind, and
    the test waits for the bind itself rather than sleeping (Linux's /proc; these tests run on Linux).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inodes = set()
        with contextlib.suppress(FileNotFoundError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(FileNotFoundError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:["):-1])
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            with open(table, encoding="ascii") as rows:
                for row in list(rows)[1:]:
                    fields = row.split()
                    if fields[9] in inodes:
                        return int(fields[1].rsplit(":", 1)[1], 16)
        time.sleep(0.01)
    raise AssertionError(f"process {pid} bound no UDP port within {timeout} s")


class OscDump:
    """``oscdump -L 0`` in the background on a port it picks; each printed line parsed into (address, [args])."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["oscdump", "-L", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.port = bound_udp_port(self.proc.pid)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, address: str, where=None, timeout: float = 10.0) -> list[str]:
        """The arguments (as oscdump prints them, strings unquoted) of the first line at ``address``."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            words = shlex.split(line)  # "<time> <address> <types> <args...>", strings in double quotes
            if len(words) >= 2 and words[1] == address and (where is None or where(words[3:])):
                return words[3:]
        raise AssertionError(f"oscdump saw no {address} in {timeout} s; it printed:\n" + "\n".join(seen))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture
def oscdump():
    dumps: list[OscDump] = []

    def start() -> OscDump:
        dump = OscDump()  # bound when this returns: replies sent from now on reach it
        dumps.append(dump)
        return dump

    yield start
    for dump in dumps:
        dump.close()


def oscsend(*args: str) -> None:
    subprocess.run(["oscsend", *args], check=True, timeout=10, capture_output=True)


def test_oscsend_generate_over_udp_and_oscdump_reads_the_replies(fake_bridge, oscdump):
    from conftest import stand_in_app

    from bridge.config import Config
    from bridge.frontends.osc.server import OscServer

    dump = oscdump()
    config = Config(host="127.0.0.1", port=0, reply_port=dump.port, output_dir=fake_bridge.output_dir)
    server = OscServer(stand_in_app(config, fake_bridge), config)
    server.start()
    try:
        oscsend("localhost", str(server.port), "/musicgen/ping")
        assert dump.expect("/musicgen/pong")
        oscsend("localhost", str(server.port), "/musicgen/generate", "ssf", "j1", "dusty lofi keys", "1.0")
        assert dump.expect("/musicgen/queued") == ["j1", "0"]
        done = dump.expect("/musicgen/done")
        assert done[:2] == ["/musicgen/generate", "j1"]
        assert sf.info(done[2]).frames == 8000
        # liblo's own types: int seconds, a symbol for the prompt, and an int id
        oscsend("localhost", str(server.port), "/musicgen/generate", "iSi", "7", "keys", "1")
        assert dump.expect("/musicgen/done", lambda a: a[1] == "7")
        oscsend("localhost", str(server.port), "/musicgen/nope", "i", "1")
        fail = dump.expect("/musicgen/fail")
        assert fail[:3] == ["/musicgen/nope", "", "unknown_address"]
    finally:
        server.stop(5)


def test_oscsend_over_tcp_uses_length_prefix_framing(fake_bridge, oscdump):
    from conftest import stand_in_app

    from bridge.config import Config
    from bridge.frontends.osc.server import OscServer

    dump = oscdump()
    fake_bridge.gate.clear()  # the job waits until oscsend has hung up: its done falls back to UDP
    config = Config(host="127.0.0.1", port=0, reply_port=dump.port, output_dir=fake_bridge.output_dir)
    server = OscServer(stand_in_app(config, fake_bridge), config)
    server.start()
    try:
        oscsend(f"osc.tcp://localhost:{server.port}", "/musicgen/generate", "ssf", "tcp1", "keys", "0.5")
        deadline = time.monotonic() + 30
        while server._connections:  # the server has seen oscsend hang up (the event, not a guess at its time)
            assert time.monotonic() < deadline, "the server kept oscsend's connection open"
            time.sleep(0.01)
        fake_bridge.gate.set()
        done = dump.expect("/musicgen/done")
        assert done[1] == "tcp1" and sf.info(done[2]).frames == 4000
        assert server.stats.tcp_accepted >= 1 and server.stats.malformed == 0
    finally:
        server.stop(5)
