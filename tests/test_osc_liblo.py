"""The daemon driven by an outside OSC implementation: liblo's ``oscsend``, replies read with ``oscdump``."""

from __future__ import annotations

import queue
import shlex
import shutil
import socket
import subprocess
import threading
import time

import pytest
import soundfile as sf

pytestmark = pytest.mark.skipif(
    shutil.which("oscsend") is None or shutil.which("oscdump") is None,
    reason="liblo's oscsend/oscdump are not installed (Debian: apt-get install liblo-tools)",
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OscDump:
    """``oscdump -L PORT`` in the background; each printed line parsed into (address, [args])."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(["oscdump", "-L", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
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

    def start(port: int) -> OscDump:
        dump = OscDump(port)
        dumps.append(dump)
        time.sleep(0.3)  # let it bind before anything is sent
        return dump

    yield start
    for dump in dumps:
        dump.close()


def oscsend(*args: str) -> None:
    subprocess.run(["oscsend", *args], check=True, timeout=10, capture_output=True)


def test_oscsend_generate_over_udp_and_oscdump_reads_the_replies(fake_bridge, oscdump):
    from bridge.app.root import App
    from bridge.config import Config
    from bridge.frontends.osc.server import OscServer

    reply_port = free_udp_port()
    config = Config(host="127.0.0.1", port=0, reply_port=reply_port, output_dir=fake_bridge.output_dir)
    server = OscServer(App.around(config, fake_bridge), config)
    server.start()
    try:
        dump = oscdump(reply_port)
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
    from bridge.app.root import App
    from bridge.config import Config
    from bridge.frontends.osc.server import OscServer

    reply_port = free_udp_port()
    fake_bridge.step_seconds = 0.02  # oscsend hangs up long before the job ends: done falls back to UDP
    config = Config(host="127.0.0.1", port=0, reply_port=reply_port, output_dir=fake_bridge.output_dir)
    server = OscServer(App.around(config, fake_bridge), config)
    server.start()
    try:
        dump = oscdump(reply_port)
        oscsend(f"osc.tcp://localhost:{server.port}", "/musicgen/generate", "ssf", "tcp1", "keys", "0.5")
        done = dump.expect("/musicgen/done")
        assert done[1] == "tcp1" and sf.info(done[2]).frames == 4000
        assert server.stats.tcp_accepted >= 1 and server.stats.malformed == 0
    finally:
        server.stop(5)
