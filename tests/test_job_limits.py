"""Every request's cost is bounded before it is accepted, cancel reaches every stage, clips cost what the prompt needs.

Issue 18, findings 2 and 3: a real Bridge on tiny-random behind a real OSC server, over real UDP.
Each test ends by checking the daemon still answers a ping.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile as sf
from conftest import OscClient

from bridge.app.bridge import Bridge
from bridge.config import Config

RATE = 32000  # tiny-random's


def _still_answers(client: OscClient) -> None:
    client.send("/musicgen/ping")
    client.expect("/musicgen/pong", timeout=10)


def _replies_for(client: OscClient, job_id: str) -> list:
    return [m for m in client.drain(0.3) if m.args and job_id in m.args[:2]]


def test_a_request_over_the_sample_limit_is_refused_before_any_work(osc_server, tiny_bridge, tmp_path):
    _server, client = osc_server(bridge=tiny_bridge)
    client.send("/musicgen/generate", "huge", "", 600.0, "sample_rate", 192000, "variations", 8)
    fail = client.expect("/musicgen/fail", lambda m: m.args[1] == "huge", timeout=10)
    assert fail.args[2] == "bad_args"
    message = fail.args[3]
    assert "921,600,000 samples" in message and "600 s x 192000 Hz x 1 channel x 8 variations" in message
    assert "limit of 460,800,000 samples" in message and "fewer variations" in message
    assert not [m for m in _replies_for(client, "huge") if m.address in ("/musicgen/queued", "/musicgen/progress")]
    assert not list((tmp_path / "out").rglob("*.wav"))  # refused before any work
    _still_answers(client)


def test_a_request_over_the_memory_limit_names_it_and_a_small_one_still_runs(osc_server, tiny_engine, tmp_path):
    bridge = Bridge(tiny_engine, Config(model="tiny-random", output_dir=tmp_path / "out", max_job_memory=64))
    _server, client = osc_server(bridge=bridge)
    client.send("/musicgen/generate", "big", "", 60.0, "variations", 4, "normalize", "lufs")
    fail = client.expect("/musicgen/fail", lambda m: m.args[1] == "big", timeout=10)
    assert fail.args[2] == "bad_args"
    assert "limit of 64 MB a job (serve --max-job-memory)" in fail.args[3]
    assert "60 s x 32000 Hz x 1 channel x 4 variations" in fail.args[3] and "shorter length" in fail.args[3]
    assert not list((tmp_path / "out").rglob("*.wav"))
    client.send("/musicgen/generate", "small", "", 0.5)
    done = client.expect("/musicgen/done", lambda m: m.args[1] == "small", timeout=60)
    assert sf.info(done.args[2]).frames == RATE // 2
    _still_answers(client)


def test_a_length_in_bars_is_capped_after_the_bars_are_converted(osc_server, tiny_bridge, tmp_path):
    _server, client = osc_server(bridge=tiny_bridge)
    client.send("/musicgen/generate", "bars", "", 0.0, "bpm", 20.0, "bars", 512, "beats_per_bar", 32)
    fail = client.expect("/musicgen/fail", lambda m: m.args[1] == "bars", timeout=10)
    assert fail.args[2] == "bad_args"
    assert "49152 s, over the 600 s limit" in fail.args[3] and "at most 6 bars" in fail.args[3]
    assert not list((tmp_path / "out").rglob("*.wav"))
    _still_answers(client)


@pytest.mark.parametrize("clip_rate", [4000, 384000])
def test_a_continuation_of_a_clip_outside_the_rate_range_is_written_in_range(osc_server, tiny_bridge, make_clip,
                                                                             clip_rate):
    clip = make_clip(seconds=1.5, rate=clip_rate, channels=1, name=f"at-{clip_rate}.wav")
    _server, client = osc_server(bridge=tiny_bridge)
    client.send("/musicgen/continue", "odd", str(clip), "", 0.5)
    warning = client.expect("/musicgen/warning", lambda m: m.args[0] == "odd", timeout=60)
    assert f"runs at {clip_rate} Hz" in warning.args[1] and f"written at {RATE} Hz" in warning.args[1]
    done = client.expect("/musicgen/done", lambda m: m.args[1] == "odd", timeout=60)
    info = sf.info(done.args[2])
    assert (info.samplerate, info.frames) == (RATE, RATE // 2)
    _still_answers(client)


def test_a_clip_whose_header_rate_is_not_audio_is_bad_audio_before_any_work(osc_server, tiny_bridge, tmp_path):
    clip = tmp_path / "four-mhz.wav"
    sf.write(clip, np.zeros((40000, 1), np.float32), 4_000_000)
    _server, client = osc_server(bridge=tiny_bridge)
    client.send("/musicgen/continue", "fast", str(clip), "", 1.0)
    fail = client.expect("/musicgen/fail", lambda m: m.args[1] == "fast", timeout=10)
    assert fail.args[2] == "bad_audio" and "4000000 Hz" in fail.args[3]
    assert not [m for m in _replies_for(client, "fast") if m.address == "/musicgen/queued"]
    _still_answers(client)


def test_a_continuation_decodes_only_the_prompt_it_needs(osc_server, tiny_bridge, tmp_path):
    """NaN in the clip's first second: only a job that reads the whole clip meets it."""
    rate = 16000
    data = (0.1 * np.sin(np.arange(12 * rate) * 2 * np.pi * 220 / rate)).astype(np.float32)[:, None]
    data[: rate // 2] = np.nan
    clip = tmp_path / "head-damaged.wav"
    sf.write(clip, data, rate, subtype="FLOAT")
    _server, client = osc_server(bridge=tiny_bridge)
    client.send("/musicgen/continue", "tail", str(clip), "", 0.5, "prompt_seconds", 2.0)
    done = client.expect("/musicgen/done", lambda m: m.args[1] == "tail", timeout=60)
    assert sf.info(done.args[2]).frames == rate // 2  # the clip's rate, the asked length
    client.send("/musicgen/continue", "whole", str(clip), "", 0.5, "include_prompt", 1)
    fail = client.expect("/musicgen/fail", lambda m: m.args[1] == "whole", timeout=60)
    assert fail.args[2] == "bad_audio" and "NaN" in fail.args[3]
    _still_answers(client)


def test_cancel_is_honoured_between_post_processing_stages(osc_server, tiny_bridge, tmp_path):
    """The worker is held inside the first variation's post-processing; the cancel arrives there."""
    inside, release = threading.Event(), threading.Event()
    finished: list[int] = []
    real_finish = tiny_bridge.renderer.finish

    def held_finish(*args, **kwargs):
        inside.set()
        release.wait(60)
        finished.append(1)
        return real_finish(*args, **kwargs)

    tiny_bridge.renderer.finish = held_finish
    _server, client = osc_server(bridge=tiny_bridge)
    client.send("/musicgen/generate", "post", "", 1.0, "variations", 3)
    client.expect("/musicgen/queued", lambda m: m.args[0] == "post", timeout=10)
    assert inside.wait(60)  # generation is over: the job is post-processing
    client.send("/musicgen/cancel", "post")
    _still_answers(client)  # the daemon answers while the job is in its post-processing
    release.set()
    fail = client.expect("/musicgen/fail", lambda m: m.args[1] == "post", timeout=60)
    assert fail.args[2] == "cancelled" and "cancelled by a client" in fail.args[3]
    assert finished == [1]  # the other two variations were never post-processed
    assert not list((tmp_path / "out").rglob("*.wav"))
    assert not [m for m in client.drain(0.5) if m.address == "/musicgen/done"]
    _still_answers(client)
