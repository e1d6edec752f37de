"""The application layer: one owner of the output device, routes that never wait, presets' model, bugs vs errors."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from bridge import errors
from bridge.app.bridge import Bridge
from bridge.app.output import OutputDevice
from bridge.app.presets import PresetLibrary
from bridge.app.rendering import is_out_of_memory
from bridge.app.root import App, load_presets
from bridge.config import Config
from bridge.errors import (
    ALL_CODES,
    ERRORS,
    EXIT_CODES,
    BadArgs,
    BridgeError,
    Internal,
    ModelError,
    error_for,
    exit_code,
)

# -- the output device has one owner: a jam and a file never share it --------------------------------


def _result_file(tmp_path, seconds=1.0, rate=32000):
    path = tmp_path / "result.wav"
    sf.write(path, np.zeros(int(seconds * rate), dtype=np.float32), rate)
    return path


def test_play_during_a_jam_is_refused_and_stop_ends_the_jam_with_its_take(osc_server, tiny_engine, tmp_path,
                                                                          jack_server):
    """Real JACK device: a file cannot cut into the jam's take; /musicgen/stop stops the jam and its starter is told."""
    bridge = Bridge(tiny_engine, Config(model="tiny-random", output_dir=tmp_path / "out"))
    _server, client = osc_server(bridge=bridge)
    client.send("/musicgen/jam/start", "jam1", "lofi", "bpm", 120.0, "bars", 1, "seed", 4)
    first = client.expect("/musicgen/jam/segment", lambda m: m.args[0] == "jam1", timeout=120)
    assert first.args[1] == 0
    client.send("/musicgen/play", str(_result_file(tmp_path)))
    refused = client.expect("/musicgen/fail", lambda m: m.args[0] == "/musicgen/play", timeout=30)
    assert refused.args[2] == "busy" and "jam" in refused.args[3]
    assert bridge.jam.running  # the refused file did not end the jam
    client.send("/musicgen/stop")
    client.expect("/musicgen/stop", timeout=30)
    done = client.expect_end("jam1", timeout=120)
    assert done.address == "/musicgen/done" and done.args[0] == "/musicgen/jam/start"
    take, rate = sf.read(done.args[2], always_2d=True)
    assert rate == 32000 and take.shape[0] > 0 and take.shape[0] % 64000 == 0  # whole bars at 120 bpm
    assert not bridge.jam.running and not bridge.output.jamming
    client.send("/musicgen/play", str(_result_file(tmp_path)))  # the device is free again
    client.expect("/musicgen/play", timeout=30)


def test_the_output_rules_without_a_device_server(tmp_path):
    """The owner's rules on their own: busy while a jam holds the device, stop reaches the jam."""
    made = []

    class Recorder:
        underruns = 0

        def __init__(self, device, buffer_seconds):
            self.played, self.stops = [], 0
            made.append(self)

        def open(self, record=False, start_seconds=None):
            del record, start_seconds

        def play_array(self, data, sample_rate, record=False):
            self.played.append((data.shape, sample_rate))

        def stop(self):
            self.stops += 1

    output = OutputDevice(make_player=Recorder, list_outputs=lambda: ["a device"])
    stopped = []
    path = _result_file(tmp_path)
    with output.for_jam(on_stop=lambda: stopped.append("jam")):
        with pytest.raises(Exception, match="a jam is playing") as busy:
            output.play_now(path)
        assert getattr(busy.value, "code", "") == "busy"
        output.stop_now()
        assert stopped == ["jam"] and made[0].stops == 1
    assert output.play_now(path) == path.resolve() and made[0].played == [((1, 32000), 32000)]
    output.close()


def test_a_route_never_waits_for_the_audio_device(osc_server, tmp_path):
    """/musicgen/play opens the device on the output thread: a ping sent after it is answered first."""
    _server, client = osc_server()
    app_output = _server.app.output
    looking = threading.Event()
    release = threading.Event()
    opened = []

    def slow_outputs():
        looking.set()
        release.wait(60)  # a device list or an audio server that takes its time: until the test lets go
        opened.append("listed")
        return []

    app_output._list_outputs = slow_outputs
    path = _result_file(tmp_path)
    try:
        client.send("/musicgen/play", str(path))
        assert looking.wait(30), "the device was never looked for"
        client.send("/musicgen/ping")
        client.expect("/musicgen/pong", timeout=30)  # a route that waited for the device would get no pong
        assert not opened  # answered while the device was still being looked for
    finally:
        release.set()
    fail = client.expect_fail("no_audio_device", timeout=10)
    assert fail.args[0] == "/musicgen/play" and "start an audio server" in fail.args[3]
    assert "writes files" not in fail.args[3]  # nothing was written: the message does not say it was


def test_ping_is_answered_while_play_opens_a_jack_device(osc_server, tmp_path, jack_server):
    """The real thing: opening a JACK device takes a child process and PortAudio's start-up; pings do not wait."""
    _server, client = osc_server()
    path = _result_file(tmp_path, seconds=2.0)
    client.send("/musicgen/play", str(path))
    client.send("/musicgen/ping")
    deadline = time.monotonic() + 30
    while not {"/musicgen/pong", "/musicgen/play"} <= {m.address for m in client.inbox}:
        assert client._receive(deadline), f"no pong and play reply within 30 s: {client.inbox}"
    order = [m.address for m in client.inbox if m.address in ("/musicgen/pong", "/musicgen/play")]
    assert order == ["/musicgen/pong", "/musicgen/play"]  # the route handed the device to the output thread
    client.send("/musicgen/stop")
    client.expect("/musicgen/stop", timeout=30)


# -- presets: `model:` reaches the daemon, and sidecars name the preset ----------------------------------


def test_a_preset_made_for_another_model_is_refused_and_sidecars_name_the_preset(tiny_engine, tmp_path):
    banks = tmp_path / "banks"
    banks.mkdir()
    (banks / "mine.yaml").write_text(
        "bank: mine\ndefaults: {bars: 1, bpm: 120}\npresets:\n"
        "  big: {prompt: huge strings, model: facebook/musicgen-large}\n"
        "  small: {prompt: dusty keys}\n", encoding="utf-8")
    bridge = Bridge(tiny_engine, Config(model="tiny-random", output_dir=tmp_path / "out"), PresetLibrary.load(banks))
    with pytest.raises(BadArgs, match="made for the model facebook/musicgen-large"):
        bridge.preset_request("mine", "big", {})
    request = bridge.preset_request("mine", "small", {"seed": 1})
    result = bridge.run("p1", request, lambda _f: None, lambda: False)
    sidecar = json.loads(result.sidecars[0].read_text())
    assert sidecar["preset"] == "mine/small" and sidecar["prompt"] == "dusty keys"


# -- a bug is not the user's fault ------------------------------------------------------------------------


def test_a_bug_in_the_engine_is_not_turned_into_length_advice(tiny_bridge, monkeypatch):
    request = tiny_bridge.make_request("text", "keys", 0.5, None, {})

    def bug(*_a, **_k):
        raise RuntimeError("shape mismatch in some layer")

    monkeypatch.setattr(tiny_bridge.engine, "generate_codes", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # the queue reports it as internal, with the log
        tiny_bridge.run("b1", request, lambda _f: None, lambda: False)

    def oom(*_a, **_k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999 bytes")

    monkeypatch.setattr(tiny_bridge.engine, "generate_codes", oom)
    with pytest.raises(ModelError, match="shorter length"):
        tiny_bridge.run("b2", request, lambda _f: None, lambda: False)
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_out_of_memory(ValueError("out of memory"))


# -- the composition root ---------------------------------------------------------------------------------


def test_the_composition_root_builds_one_of_each(tiny_engine, tmp_path):
    config = Config(model="tiny-random", output_dir=tmp_path / "out", queue_size=3)
    app = App.build(config, engine=tiny_engine)
    try:
        assert app.bridge.engine is tiny_engine and app.jobs.maxsize == 3
        assert app.output is app.bridge.output and app.jam is app.bridge.jam  # one owner, one jam controller
        assert app.presets is not None and "lofi" in app.presets.banks()  # the shipped banks
    finally:
        app.close()
    assert load_presets(None) is not None


def test_exit_codes_live_with_the_errors():
    assert set(EXIT_CODES) == set(ALL_CODES)  # every wire code has its exit status
    assert (exit_code("bad_args"), exit_code("no_audio_device"), exit_code("cancelled")) == (2, 8, 130)
    assert exit_code("a code from a newer bridge") == 1


def test_one_error_class_per_wire_code():
    classes = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, BridgeError)]
    assert set(ERRORS) == set(classes) - {BridgeError}  # every error of the tree is in the table
    assert len(set(ALL_CODES)) == len(ALL_CODES) == len(ERRORS)
    for cls in ERRORS:  # a journal's code comes back as its own class, message kept
        error = error_for(cls.code, "told")
        assert type(error) is cls and (error.code, error.message) == (cls.code, "told")
    assert type(error_for("a code from a newer bridge", "m")) is Internal
