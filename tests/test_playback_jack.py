"""Live playback on a real device: JACK's dummy backend, paced like a sound card, checked from the JACK side.

The Player runs PortAudio in a fresh child process for each take, so every take sees the JACK server the
fixture started just before; this test process never loads sounddevice itself.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import soundfile as sf

from bridge.audio import match_channels, resample, resampled_length
from bridge.audio.playback import Player, list_devices, parse_device
from bridge.errors import NoAudioDevice

if TYPE_CHECKING:
    from jack_fixture import JackServer

pytest_plugins = ["jack_fixture"]  # the jack_server and no_jack fixtures
pytestmark = [pytest.mark.jack, pytest.mark.timeout(60)]

RATE = 48000


def noise(seconds: float, channels: int = 2, seed: int = 1) -> np.ndarray:
    """(channels, samples) of 16-bit-exact noise that is never zero, so silence marks a gap."""
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    steps = rng.integers(1, 16000, size=(channels, n)) * rng.choice([-1, 1], size=(channels, n))
    return (steps / 32768).astype(np.float32)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for an event the test can only observe (a counter the child reports); fail naming it."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.01)


def returns(call: Callable[[], object], timeout: float = 30.0) -> None:
    """Run ``call`` in a thread and fail if it hangs: what matters is that it returns, not how fast."""
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"{call} hung for {timeout} s"


def portaudio_ports(server: JackServer) -> list[str]:
    return server.wait_for_ports(lambda p: p.startswith("PortAudio") and ":out_" in p)


def record_from_jack(server: JackServer, ports: list[str], path: Path, seconds: int) -> subprocess.Popen[bytes]:
    """An outside JACK client (jack_rec) recording ``ports``; returns once it is connected."""
    recorder = subprocess.Popen(["jack_rec", "-f", str(path), "-d", str(seconds), "-b", "16", *ports],
                                env=server.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_until(lambda: "jack_rec" in server.lsp("-c") or "jackrec" in server.lsp("-c"), "jack_rec did not connect")
    return recorder


def test_a_signal_reaches_jack_exactly_and_in_time(jack_server, tmp_path):
    signal_in = noise(0.5)
    with Player(device="system") as player:
        player.open(record=True)
        assert player.sample_rate == RATE
        assert "JACK" in (player.device_name or "")
        ports = portaudio_ports(jack_server)
        assert len(ports) == 2
        recorder = record_from_jack(jack_server, ports, tmp_path / "jack.wav", seconds=2)
        started = time.monotonic()
        assert player.write(signal_in) == signal_in.shape[1]
        player.finish()
        assert player.wait(30)
        took = time.monotonic() - started
        stats = player.stats()
        taken = player.recording()
    recorder.wait(10)

    # What the callback handed over, and what an outside JACK client heard: both the input, sample for sample.
    np.testing.assert_array_equal(taken, signal_in)
    heard, rate = sf.read(tmp_path / "jack.wav", dtype="float32", always_2d=True)
    heard = heard.T
    assert rate == RATE
    first = int(np.flatnonzero(heard[0])[0])
    assert first % jack_server.period == 0  # it starts on a period boundary
    np.testing.assert_array_equal(heard[:, first:first + signal_in.shape[1]], signal_in)
    assert not heard[:, :first].any() and not heard[:, first + signal_in.shape[1]:].any()

    assert player.underruns == 0 and stats is not None
    assert stats.underruns == 0 and stats.host_underflows == 0 and stats.record_dropped == 0
    assert stats.frames_delivered == signal_in.shape[1]
    assert stats.callbacks == -(-signal_in.shape[1] // jack_server.period)
    assert took >= 0.45  # paced by the server's clock, not dumped at once (a busy machine only makes it later)
    assert stats.max_callback_ms < 1000 * jack_server.period / RATE


def test_a_file_is_resampled_to_the_device_rate_and_recorded_to_a_file(jack_server, tmp_path):
    mono = noise(0.4, channels=1)[:, : 12800]  # 0.4 s at 32 kHz
    clip = tmp_path / "result.wav"
    sf.write(clip, mono.T, 32000, subtype="FLOAT")
    take = tmp_path / "takes" / "take.wav"
    player = Player(device="jack")  # a part of the host API's name works too, as in sounddevice
    player.play_file(clip, record=take)
    assert player.wait(10)
    recorded, rate = sf.read(take, dtype="float32", always_2d=True)
    expected = resample(match_channels(mono, 2), 32000, RATE)
    assert rate == RATE
    assert recorded.shape == (resampled_length(12800, 32000, RATE), 2) == expected.T.shape
    np.testing.assert_array_equal(recorded.T, expected)
    assert player.underruns == 0


def test_a_late_producer_is_counted_as_underruns_and_heard_as_silence(jack_server):
    player = Player(device="system", start_seconds=0.0)
    player.open(record=True)
    first, second = noise(0.1, seed=2), noise(0.1, seed=3)
    player.write(first)
    # the device keeps asking while nothing comes: wait until it has asked for 0.1 s more than there was
    wait_until(lambda: (stats := player.stats()) is not None and stats.underrun_frames >= 0.1 * RATE,
               "the device did not run dry")
    player.write(second)
    player.finish()
    assert player.wait(10)
    taken = player.recording()
    stats = player.stats()
    assert stats is not None
    assert player.underruns >= 1 and stats.underrun_frames >= 0.1 * RATE
    silent = ~taken.any(axis=0)
    assert int(silent.sum()) == stats.underrun_frames
    assert taken.shape[1] == first.shape[1] + second.shape[1] + stats.underrun_frames
    np.testing.assert_array_equal(taken[:, ~silent], np.concatenate([first, second], axis=1))


def test_stop_cuts_a_take_short_and_the_player_plays_again(jack_server):
    player = Player(device="system")
    player.play_array(noise(5.0), RATE, record=True)
    wait_until(lambda: player.delivered_frames > 0, "playback did not start")
    returns(player.stop)
    assert not player.playing
    stats = player.stats()
    assert stats is not None and 0 < stats.frames_delivered < 5 * RATE  # cut short of the 5 s take
    assert player.recording().shape[1] == stats.frames_delivered
    assert player.wait(30)  # a stop is not an error

    again = noise(0.2, seed=4)
    player.play_array(again, RATE, record=True)
    assert player.wait(10)
    np.testing.assert_array_equal(player.recording(), again)
    assert player.underruns == 0


def test_list_devices_and_device_choice(jack_server):
    devices = list_devices()
    assert [(d.name, d.hostapi, d.channels, d.default_rate, d.is_default) for d in devices] == [
        ("system", "JACK Audio Connection Kit", 2, 48000.0, True)]
    assert parse_device("0") == 0 and parse_device(" system ") == "system" and parse_device("") is None
    with Player(device=str(devices[0].index)) as player:
        player.open()
        assert player.device_name == "system (JACK Audio Connection Kit)"
    with pytest.raises(NoAudioDevice) as caught:
        Player(device="no such card").open()
    assert caught.value.code == "no_audio_device"
    assert "'no such card'" in caught.value.message and "[0] system (JACK Audio Connection Kit)" in caught.value.message
    with pytest.raises(NoAudioDevice, match="3 were asked for"):
        Player(device="system", channels=3).open()
    with pytest.raises(NoAudioDevice, match="32000 Hz"):  # JACK runs at its own rate only
        Player(device="system", sample_rate=32000).open()


def test_without_jack_there_is_no_audio_device_and_a_reason(no_jack):
    if list_devices():
        pytest.skip("this machine has an audio output besides JACK")
    player = Player()
    refused: list[NoAudioDevice] = []

    def open_it() -> None:
        try:
            player.open()
        except NoAudioDevice as exc:
            refused.append(exc)

    returns(open_it)  # refused, not hung
    assert len(refused) == 1 and refused[0].code == "no_audio_device"
    assert refused[0].message.startswith("no audio output device found (PortAudio host APIs: ")
    assert "start a JACK server or connect a sound card" in refused[0].message
    with pytest.raises(NoAudioDevice):
        player.play_array(np.zeros((2, 100), np.float32), RATE)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_jack_server_dying_mid_take_fails_fast_instead_of_hanging(jack_server, how):
    player = Player(device="system")
    player.play_array(noise(5.0), RATE)
    wait_until(lambda: player.delivered_frames >= 0.2 * RATE, "playback did not start")
    jack_server.kill(getattr(signal, how))
    with pytest.raises(NoAudioDevice) as caught:
        player.wait(timeout=30)  # raised, not a wait that runs out (False) or the rest of the take
    assert caught.value.code == "no_audio_device" and "JACK server" in caught.value.message
    returns(player.stop)
    assert not player.playing and player.queued_frames == 0
    assert player.delivered_frames < 5 * RATE  # the take ended with the server, short of its 5 s


def test_a_frozen_jack_server_is_caught_by_the_reader(jack_server):
    player = Player(device="system", stall_timeout=0.5)
    player.play_array(noise(5.0), RATE)
    wait_until(lambda: player.delivered_frames >= 0.2 * RATE, "playback did not start")
    jack_server.kill(signal.SIGSTOP)  # the server hangs: no callbacks, yet nothing says the stream ended
    with pytest.raises(NoAudioDevice, match="stopped asking for audio"):
        player.wait(timeout=30)  # the reader's stall error, not a wait that runs out
    returns(player.stop)
    jack_server.kill(signal.SIGKILL)  # a frozen server takes seconds to terminate


def test_the_calling_process_never_loads_portaudio(jack_server, tmp_path):
    script = tmp_path / "play.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        import numpy as np
        from bridge.audio.playback import Player

        if __name__ == "__main__":
            player = Player(device="system")
            player.play_array(np.full((2, 4800), 0.25, np.float32), 48000, record=True)
            player.wait(10)
            print(json.dumps({"loaded": "sounddevice" in sys.modules, "underruns": player.underruns,
                              "frames": player.recording().shape[1]}))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[1], env=jack_server.env, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"loaded": False, "underruns": 0, "frames": 4800}
