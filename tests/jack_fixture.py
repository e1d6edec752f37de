"""A real JACK server on the dummy backend for tests: paced audio (and MIDI) with no sound card.

Use the ``jack_server`` fixture: it starts ``jackd --no-realtime -d dummy`` under a name no other test
uses, waits until its ports exist, points ``JACK_DEFAULT_SERVER`` at it for this test (children started
from the test inherit it), and kills it afterwards. ``no_jack`` points JACK clients at a server name that
does not exist, so "no audio device" can be tested even while other JACK servers run.

PortAudio (sounddevice) lists devices once, when it is loaded: load it only in processes started after
the server is up (``bridge.audio.playback`` does so by itself: each take runs in a fresh child process).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

START_TIMEOUT = 10.0
POOL_SIZE = 6  # of JACK's 8 server rows; leaves room for servers outside the tests


@dataclass
class JackServer:
    """A running ``jackd -d dummy``; ``env`` is os.environ pointed at it, for subprocesses."""

    name: str
    sample_rate: int
    period: int
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)
    log: IO[bytes] | None = None  # jackd's output

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def lsp(self, *args: str) -> str:
        """``jack_lsp`` on this server (e.g. ``lsp("-c")`` lists connections)."""
        return subprocess.run(["jack_lsp", "-s", self.name, *args], capture_output=True, text=True,
                              timeout=5, check=False, env=self.env).stdout

    def ports(self) -> list[str]:
        return [line for line in self.lsp().splitlines() if line and not line.startswith(" ")]

    def wait_for_ports(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> list[str]:
        """Poll until ``predicate(port_name)`` holds for some port; returns those ports (empty on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [p for p in self.ports() if predicate(p)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL: the server dies at once, as in a crash)."""
        if self.alive:
            self.process.send_signal(sig)

    def output(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        """Stop the server and leave nothing behind, also after a test killed it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case a test stopped it with SIGSTOP
            # A client still closing when the server gets SIGTERM makes jackd wait 5 s for it: let
            # clients (a player's child process exiting just after its take) leave first.
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and any(not p.startswith("system:") for p in self.ports()):
                time.sleep(0.05)
            self.process.terminate()
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(3)
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.process.returncode == -signal.SIGKILL:
            # A killed server keeps its row in JACK's table of 8 servers and ~100 MB of /dev/shm until
            # a server of the same name starts again: start one and stop it properly.
            again = _try_start(self.name, self.sample_rate, self.period)
            if isinstance(again, JackServer):
                again.stop()
        # jackd leaves its socket and semaphores behind in /dev/shm even when stopped properly.
        shm = Path("/dev/shm")
        if shm.is_dir():
            for leftover in shm.glob(f"jack_*{self.name}_*"):
                leftover.unlink(missing_ok=True)


def start_jack_server(sample_rate: int = 48000, period: int = 1024) -> JackServer:
    """Start a dummy-backend JACK server under a free name of a small pool and wait until its ports are up.

    JACK keeps a table of 8 servers, and a server that is killed (as a crash test does) keeps its row
    until a server of the same name starts again; so names come from a pool and are reused, never
    invented, and a name whose server is alive (another test run) is skipped. Raises RuntimeError with
    jackd's output when none comes up; callers stop the server with ``stop()``.
    """
    failures = []
    for slot in range(POOL_SIZE):
        name = f"mgb-test-{slot}"
        server = _try_start(name, sample_rate, period)
        if isinstance(server, JackServer):
            return server
        failures.append(f"{name}: {server}")
        if "already active" not in server and "Failed to open server" not in server:
            break
    raise RuntimeError("no JACK dummy server came up:\n" + "\n".join(failures))


def _running(name: str, env: dict[str, str]) -> bool:
    return subprocess.run(["jack_lsp", "-s", name], env=env, capture_output=True, timeout=5,
                          check=False).returncode == 0


def _try_start(name: str, sample_rate: int, period: int) -> JackServer | str:
    env = dict(os.environ)
    env.update(JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1", JACK_NO_AUDIO_RESERVATION="1")
    if _running(name, env):
        return "already active"
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        ["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", str(sample_rate), "-p", str(period)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = JackServer(name=name, sample_rate=sample_rate, period=period, process=process, env=env, log=log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        if "system:playback_1" in server.ports():
            time.sleep(0.05)
            if process.poll() is None:  # the ports are this server's, not those of a namesake
                return server
        time.sleep(0.05)
    output = server.output()
    server.stop()
    return " ".join(line for line in output.splitlines() if "server" in line.lower()) or output[-300:]


@pytest.fixture
def jack_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[JackServer]:
    """A JACK dummy server of its own for this test, 48 kHz, 1024-frame periods; JACK_DEFAULT_SERVER points at it."""
    if shutil.which("jackd") is None or shutil.which("jack_lsp") is None:
        pytest.skip("jackd is not installed (Debian: apt-get install jackd2)")
    server = start_jack_server()
    monkeypatch.setenv("JACK_DEFAULT_SERVER", server.name)
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def no_jack(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point JACK clients at a server name nobody runs (and forbid starting one); returns that name."""
    name = f"mgb-absent-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("JACK_DEFAULT_SERVER", name)
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    return name
