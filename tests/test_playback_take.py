"""A take's reader against fake audio children: no PortAudio, no JACK, just the pipe protocol.

The Player's ``popen`` (the seam the daemon's launcher uses) starts a small Python script instead of
``bridge.audio.playback_child``; the script speaks the protocol, or breaks it on purpose.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from bridge.audio.playback import Player, Recording
from bridge.errors import BadArgs, NoAudioDevice

pytestmark = pytest.mark.timeout(60)

# Every fake reads the settings, says it opened a device, and waits for the parent's START.
PRELUDE = textwrap.dedent("""
    import json, os, sys, time
    from bridge.audio.playback_child import *
    settings = json.loads(receive(0)[1])
    info = {"index": 0, "name": "fake", "sample_rate": 48000, "capacity": 4800, "latency": 0.01, "blocksize": 0}
    send(1, READY, json.dumps(info).encode())
    while receive(0)[0] != START:
        pass
""")
WAIT_FOR_THE_KILL = "\nwhile True:\n    receive(0)\n"


def fake_child(script: str, started: list[subprocess.Popen[bytes]],
               prelude: str = PRELUDE) -> Callable[..., subprocess.Popen[bytes]]:
    def popen(_command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(script)], **kwargs)
        started.append(process)
        return process

    return popen


def failure(player: Player) -> NoAudioDevice:
    """Start the take and return the error that ends it."""
    player.open()
    player.start()
    with pytest.raises(NoAudioDevice) as caught:
        player.wait(timeout=30)  # raised, not a wait that runs out
    assert not player.playing
    return caught.value


@pytest.mark.parametrize(("bad", "what"), [
    ("send(1, STATUS, bytes(5))", "(a status message of 5 bytes, not 96)"),
    ("write_all(1, HEADER.pack(b'Z', 3) + b'abc')", "(an unknown message type b'Z' of 3 bytes)"),
    ("send(1, RECORD, bytes(12))", "(a record message of 12 bytes, not a multiple of 8)"),
])
def test_a_malformed_message_is_reported_as_such_and_the_child_is_killed(bad, what):
    started: list[subprocess.Popen[bytes]] = []
    player = Player(popen=fake_child(bad + WAIT_FOR_THE_KILL, started), stall_timeout=60)
    error = failure(player)
    assert error.code == "no_audio_device"
    assert error.message.startswith(f"the audio process sent a malformed message {what}, so it was stopped")
    assert "exited" not in error.message
    assert started[0].wait(30) == -signal.SIGKILL  # the take killed it: it would have waited forever
    player.stop()  # the take is over: nothing left to stop


def test_a_ready_message_that_is_not_a_device_fails_the_open():
    started: list[subprocess.Popen[bytes]] = []
    prelude = "from bridge.audio.playback_child import *\nreceive(0)\nsend(1, READY, b'{\"name\": \"fake\"}')\n"
    player = Player(popen=fake_child(WAIT_FOR_THE_KILL, started, prelude=prelude))
    with pytest.raises(NoAudioDevice, match=r"malformed message \(a ready message that is not the device's "):
        player.open()
    assert started[0].wait(30) == -signal.SIGKILL


def test_a_child_that_exits_is_still_reported_as_exited_with_its_last_words():
    started: list[subprocess.Popen[bytes]] = []
    player = Player(popen=fake_child("sys.stderr.write('the device vanished\\n'); sys.stderr.flush(); os._exit(3)",
                                     started), stall_timeout=60)
    error = failure(player)
    assert error.message == "the audio process exited with code 3 (the device vanished)"


def test_a_child_that_goes_silent_is_killed_by_the_reader():
    started: list[subprocess.Popen[bytes]] = []
    player = Player(popen=fake_child(WAIT_FOR_THE_KILL, started), stall_timeout=0.5)
    error = failure(player)
    assert error.code == "no_audio_device"
    assert error.message == ("the audio process for fake stopped responding for 0.5 s: restart the audio server "
                             "and retry")
    assert started[0].wait(30) == -signal.SIGKILL


def test_a_device_that_stops_asking_is_caught_while_the_child_still_talks():
    started: list[subprocess.Popen[bytes]] = []
    heartbeat = """
        counters = [0] * COUNTERS
        counters[C_STARTED], counters[C_CALLBACKS] = 1, 7  # started, then no callback ever again
        while True:
            send(1, STATUS, STATUS_STRUCT.pack(*counters))
            time.sleep(0.01)
    """
    player = Player(popen=fake_child(heartbeat, started), stall_timeout=1.0)
    error = failure(player)
    assert error.message.startswith("audio device fake stopped asking for audio (no callback for 1.0 s")
    assert started[0].wait(30) == -signal.SIGKILL


def test_the_device_s_silence_counts_from_its_start_not_from_the_open():
    # Priming can take longer than the stall limit (a busy machine generating the run-ahead), and the
    # first callback comes a while after the start: neither is a device that stopped asking.
    started: list[subprocess.Popen[bytes]] = []
    prelude = textwrap.dedent("""
        import json, os, sys, time
        from bridge.audio.playback_child import *
        settings = json.loads(receive(0)[1])
        info = {"index": 0, "name": "fake", "sample_rate": 48000, "capacity": 4800, "latency": 0.01,
                "blocksize": 0}
        send(1, READY, json.dumps(info).encode())
    """)
    script = """
        counters = [0] * COUNTERS
        def beat(seconds):
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                send(1, STATUS, STATUS_STRUCT.pack(*counters))
                time.sleep(0.01)
        beat(2.5)  # opened, not started, for over twice the limit
        counters[C_STARTED] = 1
        beat(0.15)  # started; the first callback is late
        for _ in range(10):
            counters[C_CALLBACKS] += 1
            beat(0.02)
        counters[C_DRAINED] = 1
        send(1, STATUS, STATUS_STRUCT.pack(*counters))
        send(1, DONE)
        sys.exit(0)
    """
    player = Player(popen=fake_child(script, started, prelude=prelude), stall_timeout=1.0)
    player.open()
    player.start()
    assert player.wait(30)
    assert started[0].wait(30) == 0


# A child that plays by the rules: what it is sent is "delivered" (recorded back), FINISH ends the take.
ECHO = """
    channels, consumed = settings["channels"], 0
    while True:
        kind, payload = receive(0)
        if kind == AUDIO:
            consumed += len(payload) // (4 * channels)
            send(1, RECORD, payload)
        elif kind == FINISH:
            counters = [0] * COUNTERS
            counters[C_CONSUMED] = counters[C_FRAMES_OUT] = consumed
            send(1, STATUS, STATUS_STRUCT.pack(*counters))
            send(1, DONE)
            sys.exit(0)
"""


def test_a_recording_in_memory_or_in_a_file_holds_what_was_delivered(tmp_path):
    frames = np.linspace(-0.5, 0.5, 2 * 300, dtype=np.float32).reshape(2, 300)
    started: list[subprocess.Popen[bytes]] = []
    player = Player(popen=fake_child(ECHO, started))
    player.open(record=True)
    player.start()
    assert player.write(frames) == 300
    player.finish()
    assert player.wait(30)
    np.testing.assert_array_equal(player.recording(), frames)
    assert player.delivered_frames == 300

    player.open(record=tmp_path / "take.wav")
    player.start()
    player.write(frames)
    player.finish()
    assert player.wait(30)
    with pytest.raises(BadArgs, match="not recorded in memory"):
        player.recording()
    written, rate = sf.read(tmp_path / "take.wav", dtype="float32", always_2d=True)
    assert rate == 48000
    np.testing.assert_array_equal(written.T, frames)
    assert [process.wait(30) for process in started] == [0, 0]


def test_what_record_means():
    assert Recording.of(True) == Recording() and Recording().file is None  # in memory
    assert Recording.of(False) is None and Recording.of(None) is None  # nothing
    assert Recording.of("takes/a.wav") == Recording.of(Path("takes/a.wav")) == Recording(Path("takes/a.wav"))
    assert Recording.of(Recording(Path("b.flac"))) == Recording(Path("b.flac"))
