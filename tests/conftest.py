"""Shared fixtures. Engine fixtures build the built-in tiny-random models once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.app.bridge import Bridge
from bridge.config import Config
from bridge.engine import Engine
from bridge.engine.models import load_model

pytest_plugins = ["jack_fixture"]  # jack_server, no_jack: a JACK dummy server per test


@pytest.fixture(scope="session")
def tiny_loaded():
    # fp32: the engine tests compare tokens with transformers' generate (int8, the CPU default, is
    # tested in tests/test_speed_correctness.py)
    return load_model("tiny-random", precision="fp32")


@pytest.fixture(scope="session")
def tiny_engine(tiny_loaded) -> Engine:
    return Engine(tiny_loaded)


@pytest.fixture
def tiny_bridge(tiny_engine, tmp_path) -> Bridge:
    """A bridge on tiny-random writing into a fresh folder for each test."""
    return Bridge(tiny_engine, Config(model="tiny-random", output_dir=tmp_path / "out"))


@pytest.fixture(scope="session")
def melody_engine() -> Engine:
    return Engine(load_model("tiny-random-melody", precision="fp32"))


@pytest.fixture(scope="session")
def stereo_engine() -> Engine:
    return Engine(load_model("tiny-random-stereo", precision="fp32"))


@pytest.fixture
def make_clip(tmp_path) -> Callable[..., Path]:
    """Write a test clip: a chord of sines with a little noise, any rate and channel count."""

    def _make(seconds: float = 3.0, rate: int = 44100, channels: int = 2, name: str = "clip.wav",
              subtype: str = "FLOAT") -> Path:
        t = np.arange(int(seconds * rate)) / rate
        rng = np.random.default_rng(7)
        tones = [0.2 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.18, 329.63)]
        mono = sum(tones) + 0.01 * rng.standard_normal(t.size)
        data = np.stack([mono * (1.0 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)
        path = tmp_path / name
        sf.write(path, data, rate, subtype=subtype)
        return path

    return _make


# ------------------------------------------------------------------------------------------------
# OSC daemon fixtures (issue 3): a fake Bridge, OSC clients on real sockets, and a running server.
# ------------------------------------------------------------------------------------------------
import queue as _queue  # noqa: E402
import socket as _socket  # noqa: E402
import threading as _threading  # noqa: E402
import time as _time  # noqa: E402

from bridge import tempo as _tempo  # noqa: E402
from bridge.app.requests import build_request as _build_request  # noqa: E402
from bridge.app.results import Chunk as _Chunk  # noqa: E402
from bridge.app.results import JobResult as _JobResult  # noqa: E402
from bridge.audio import read_clip as _read_clip  # noqa: E402
from bridge.errors import Cancelled as _Cancelled  # noqa: E402
from bridge.errors import ModelError as _ModelError  # noqa: E402
from bridge.errors import NotFound as _NotFound  # noqa: E402
from bridge.frontends.osc.transport import FrameReader as _FrameReader  # noqa: E402
from bridge.frontends.osc.transport import Message as _Message  # noqa: E402
from bridge.frontends.osc.transport import decode_packet as _decode_packet  # noqa: E402
from bridge.frontends.osc.transport import encode_message as _encode_message  # noqa: E402
from bridge.frontends.osc.transport import frame as _frame  # noqa: E402
from bridge.options import Request as _Request  # noqa: E402


class FakeBridge:
    """Stands in for bridge.app.bridge.Bridge: real request validation, a stepped run that honours cancel.

    ``run`` takes ``steps`` steps of ``step_seconds`` (reporting progress after each), waits while
    ``gate`` is clear, and writes a real WAV of the asked length. Prompts starting with "raise "
    pick an error: "raise model_error", "raise bug" (a RuntimeError).
    """

    sample_rate = 8000

    def __init__(self, output_dir: Path, steps: int = 5, step_seconds: float = 0.002) -> None:
        self.output_dir = output_dir
        self.steps = steps
        self.step_seconds = step_seconds
        self.gate = _threading.Event()
        self.gate.set()
        self.started: _queue.Queue[str] = _queue.Queue()
        self.finished_steps: dict[str, int] = {}
        self.busy_cpu = False  # burn CPU in Python instead of sleeping (holds the GIL like real work)

    def info(self) -> dict:
        return {"version": "test", "model": "fake-model", "device": "cpu", "dtype": "float32",
                "sample_rate": self.sample_rate}

    def make_request(self, mode, prompt, seconds, clip, options, clip_after=None) -> _Request:
        return _build_request(mode, prompt, options, seconds=seconds or None, clip=clip or None,
                              clip_after=clip_after or None)

    def preset_request(self, bank, preset, options) -> _Request:
        if (bank, preset) != ("demo", "keys"):
            raise _NotFound(f"no preset {bank}/{preset}: the fake knows demo/keys")
        return self.make_request("text", "lofi keys", 0.5, None, options)

    def run(self, job_id, request, progress, is_cancelled, on_chunk=None, on_warning=None) -> _JobResult:
        self.started.put(job_id)
        if request.prompt == "warn me" and on_warning is not None:
            on_warning("the fake is slower than real time")
        if request.clip:
            _read_clip(request.clip)
        if request.prompt == "raise model_error":
            raise _ModelError("the fake model failed: try again")
        if request.prompt == "raise bug":
            raise RuntimeError("fake bug")
        done = 0
        for step in range(self.steps):
            while not self.gate.is_set():
                if is_cancelled():
                    raise _Cancelled("cancelled")
                self.gate.wait(0.005)
            if is_cancelled():
                self.finished_steps[job_id] = done
                raise _Cancelled("cancelled")
            if self.busy_cpu:
                end = _time.perf_counter() + self.step_seconds
                while _time.perf_counter() < end:
                    pass
            else:
                _time.sleep(self.step_seconds)
            done += 1
            progress((step + 1) / self.steps)
        self.finished_steps[job_id] = done
        if request.bars is not None and request.bpm is not None:
            samples = _tempo.bars_to_samples(request.bars, request.bpm, self.sample_rate, request.beats_per_bar)
        else:
            samples = round((request.seconds or 0) * self.sample_rate)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for v in range(request.variations):
            path = self.output_dir / f"{job_id or 'job'}-{v}.wav"
            sf.write(path, np.zeros(samples, dtype=np.float32), self.sample_rate)
            paths.append(path)
        if request.stream and on_chunk is not None:
            on_chunk(_Chunk(index=0, path=paths[0], start_seconds=0.0, seconds=samples / self.sample_rate))
        return _JobResult(paths=paths, seconds=samples / self.sample_rate, sample_rate=self.sample_rate)


def stand_in_app(config: Config, runner, *, journal=None, link=None):
    """An App around a stand-in facade (a :class:`FakeBridge`, a runner), with real parts of its own: an
    output device, a result store in the config's output folder and an idle jam controller (and ``link``,
    a Link session or a stand-in for one, when given)."""
    from bridge.app.jam import JamController
    from bridge.app.output import OutputDevice
    from bridge.app.root import App
    from bridge.app.store import ResultStore

    output = OutputDevice(config.audio_device)
    jam = JamController(output, ResultStore(config.resolved_output_dir()))
    return App.assemble(config, runner, output=output, jam=jam, journal=journal, link=link)


class OscClient:
    """A UDP OSC peer on 127.0.0.1 that keeps what it receives and waits for what a test expects."""

    def __init__(self, server_port: int = 0, bind_port: int = 0) -> None:
        self.sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", bind_port))
        self.port = self.sock.getsockname()[1]
        self.server_port = server_port
        self.inbox: list[_Message] = []

    def send(self, address: str, *args) -> None:
        self.send_raw(_encode_message(address, list(args)))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.server_port))

    def _receive(self, deadline: float) -> bool:
        left = deadline - _time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        self.inbox += [m for m in _decode_packet(data) if isinstance(m, _Message)]
        return True

    def expect(self, address: str, where=None, timeout: float = 20.0) -> _Message:
        """The first received message at ``address`` (matching ``where``), taken out of the inbox."""
        deadline = _time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.inbox):
                if message.address == address and (where is None or where(message)):
                    return self.inbox.pop(i)
            if not self._receive(deadline):
                seen = "\n  ".join(f"{m.address} {list(m.args)}" for m in self.inbox) or "nothing"
                raise AssertionError(f"no {address} within {timeout} s; received:\n  {seen}")

    def expect_fail(self, code: str, timeout: float = 20.0) -> _Message:
        return self.expect("/musicgen/fail", lambda m: m.args[2] == code, timeout)

    def expect_end(self, job_id: str, timeout: float = 20.0) -> _Message:
        """The done or fail that ends job ``job_id``."""
        deadline = _time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.inbox):
                if m.address in ("/musicgen/done", "/musicgen/fail") and len(m.args) > 1 and m.args[1] == job_id:
                    return self.inbox.pop(i)
            if not self._receive(deadline):
                raise AssertionError(f"job {job_id} did not end within {timeout} s; inbox: {self.inbox}")

    def drain(self, seconds: float = 0.1) -> list[_Message]:
        deadline = _time.monotonic() + seconds
        while self._receive(deadline):
            pass
        out, self.inbox = self.inbox, []
        return out

    def register(self) -> None:
        self.send("/musicgen/notify", self.port)
        self.expect("/musicgen/notify", lambda m: list(m.args) == [self.port])

    def close(self) -> None:
        self.sock.close()


class TcpOscClient:
    """A TCP OSC peer in either framing ("length": OSC 1.0 as liblo, "slip": OSC 1.1)."""

    def __init__(self, server_port: int, framing: str = "length") -> None:
        self.sock = _socket.create_connection(("127.0.0.1", server_port), timeout=5)
        self.framing = framing
        self.reader = _FrameReader(framing)
        self.inbox: list[_Message] = []
        self.raw_frames: list[bytes] = []

    def send(self, address: str, *args) -> None:
        self.sock.sendall(_frame(_encode_message(address, list(args)), self.framing))

    def expect(self, address: str, where=None, timeout: float = 20.0) -> _Message:
        deadline = _time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.inbox):
                if message.address == address and (where is None or where(message)):
                    return self.inbox.pop(i)
            left = deadline - _time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {address} within {timeout} s; inbox: {self.inbox}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise AssertionError(f"connection closed before {address}; inbox: {self.inbox}")
            self.raw_frames.append(data)
            for packet in self.reader.feed(data):
                assert isinstance(packet, bytes), packet
                self.inbox += [m for m in _decode_packet(packet) if isinstance(m, _Message)]

    def closed_by_server(self, timeout: float = 20.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_bridge(tmp_path) -> FakeBridge:
    return FakeBridge(tmp_path / "out")


@pytest.fixture
def osc_server(fake_bridge, tmp_path):
    """Start an OscServer on 127.0.0.1 (free port) with a client listening at its reply port.

    ``osc_server(bridge=None, token=None, queue_size=16, link=None, **server_kwargs) -> (server, client)``;
    every server started is stopped at the end of the test.
    """
    from bridge.app.root import App
    from bridge.frontends.osc.server import OscServer

    started: list = []

    def start(bridge=None, token=None, queue_size=16, host="127.0.0.1", link=None, **server_kwargs):
        client = OscClient()
        config = Config(model="fake-model", host=host, port=0, reply_port=client.port, output_dir=tmp_path / "out",
                        token=token, queue_size=queue_size)
        if isinstance(bridge, Bridge):
            app = App.around(config, bridge)
        else:
            app = stand_in_app(config, bridge if bridge is not None else fake_bridge, link=link)
        server = OscServer(app, config, **server_kwargs)
        server.start()
        client.server_port = server.port
        started.append((server, client))
        return server, client

    yield start
    fake_bridge.gate.set()
    for server, client in started:
        server.stop(timeout=5)
        client.close()
