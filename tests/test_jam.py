"""The jam's segments: whole bars on the absolute grid, continuous across handovers, changes at the next one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bridge import tempo
from bridge.engine.jam import Jam, JamSettings
from bridge.errors import BadArgs


def test_segments_are_whole_bars_and_continuous(tiny_engine):
    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=97.0, bars=2, seed=3))
    segments = [jam.next_segment() for _ in range(3)]
    edges = [0] + [tempo.bars_to_samples(2 * (i + 1), 97.0, 32000) for i in range(3)]
    assert [s.start_sample for s in segments] == edges[:3]
    assert [s.audio.shape[-1] for s in segments] == [b - a for a, b in itertools.pairwise(edges)]
    take = np.concatenate([s.audio for s in segments], axis=-1)
    # the take equals one decode of the whole token timeline: no gap, no jump at the handovers
    whole = tiny_engine.decode(jam.codes)[0][:, : take.shape[-1]]
    assert float(np.abs(take - whole).max()) < 1e-5


def test_changes_apply_at_the_next_segment(tiny_engine):
    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=1))
    first = jam.next_segment()
    jam.set({"prompt": "techno", "temperature": 0.7})
    assert jam.settings.prompt == "lofi"  # not before the next segment
    second = jam.next_segment()
    assert (first.settings.prompt, second.settings.prompt) == ("lofi", "techno")
    assert second.settings.temperature == 0.7


def test_tempo_change_starts_a_new_grid_at_the_boundary(tiny_engine):
    jam = Jam(tiny_engine, JamSettings(bpm=120.0, bars=1, seed=1))
    jam.next_segment()  # 2 s
    jam.set({"bpm": 60.0})
    seg = jam.next_segment()  # one bar at 60 bpm: 4 s from 2 s
    assert seg.start_sample == 64000 and seg.audio.shape[-1] == 128000


def test_bad_jam_settings_say_what_to_do(tiny_engine):
    jam = Jam(tiny_engine, JamSettings(bpm=120.0, bars=1))
    with pytest.raises(BadArgs, match="did you mean 'temperature'"):
        jam.set({"temprature": 1.0})
    with pytest.raises(BadArgs, match="at most 20 s"):
        jam.set({"bars": 64})


@pytest.mark.parametrize(("rate_from", "rate_to"), [(32000, 48000), (32000, 44100), (32000, 32000)])
def test_stream_resampler_equals_one_shot(rate_from, rate_to):
    from scipy.signal import resample_poly

    from bridge.audio import StreamResampler

    rng = np.random.default_rng(1)
    signal = rng.standard_normal((2, 50_000)).astype(np.float32) * 0.1
    resampler = StreamResampler(rate_from, rate_to, channels=2)
    pieces = [resampler.push(signal[:, a : a + n]) for a, n in ((0, 7000), (7000, 13001), (20001, 29999))]
    pieces.append(resampler.flush())
    streamed = np.concatenate(pieces, axis=1)
    from fractions import Fraction

    ratio = Fraction(rate_to, rate_from)
    whole = resample_poly(signal, ratio.numerator, ratio.denominator, axis=1)
    assert streamed.shape == whole.shape
    assert float(np.abs(streamed - whole).max()) < 1e-4


def test_run_jam_writes_segments_and_the_take(tiny_engine, tmp_path):
    import soundfile as sf

    from bridge.app.jam import run_jam

    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=2))
    announced = []
    take = run_jam(jam, tmp_path / "jam", should_stop=lambda: False, for_seconds=5.0,
                   on_segment=lambda i, p, s, n: announced.append((i, p.name, s, n)))
    assert [a[0] for a in announced] == [0, 1, 2]  # 3 bars of 2 s reach 5 s
    assert [a[2] for a in announced] == [0.0, 2.0, 4.0]
    assert [a[3] for a in announced] == [2.0, 2.0, 2.0]  # each segment is one bar of 2 s
    data, rate = sf.read(take.path, always_2d=True)
    assert rate == 32000 and data.shape[0] == 3 * 64000
    joined = np.concatenate([sf.read(p, always_2d=True)[0] for p in take.segments], axis=0)
    np.testing.assert_array_equal(joined, data)


def test_the_take_goes_to_disk_as_it_grows_and_is_put_in_place_whole(tiny_engine, tmp_path):
    # A jam can run for hours: the take is written segment by segment, not held in memory to the end.
    import soundfile as sf

    from bridge.app.jam import run_jam

    folder = tmp_path / "jam"
    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=2))
    seen: list[tuple[bool, int]] = []

    def on_segment(index, _path, _start, _seconds):
        partial = [*folder.glob(".partial-*.wav"), *tmp_path.glob(".partial-*.wav")]
        assert len(partial) == 2  # the take and the record, each in its folder (nothing plays: the record is the take)
        seen.append(((folder / "take.wav").exists(), min(p.stat().st_size for p in partial)))

    record = tmp_path / "record.wav"
    take = run_jam(jam, folder, should_stop=lambda: False, for_seconds=5.0, on_segment=on_segment, record=record)
    # while the jam ran, no take under its name, and its temporary held every segment so far (float32 frames)
    assert [exists for exists, _ in seen] == [False, False, False]
    assert all(size >= (i + 1) * 64000 * 4 for i, (_, size) in enumerate(seen))
    data, rate = sf.read(take.path, always_2d=True)
    assert rate == 32000 and data.shape[0] == 3 * 64000 and take.seconds == 6.0
    np.testing.assert_array_equal(sf.read(record, always_2d=True)[0], data)
    assert take.record_path == record
    assert not list(folder.glob(".partial-*")) and not list(tmp_path.glob(".partial-*"))


def test_a_jam_that_fails_leaves_no_take_and_no_temporary(tiny_engine, tmp_path, monkeypatch):
    from bridge.app.jam import run_jam
    from bridge.engine.jam import Segment

    folder = tmp_path / "jam"
    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=2))
    real = jam.next_segment
    made: list[Segment] = []

    def next_segment(is_cancelled=None):
        if len(made) == 2:
            raise RuntimeError("the engine broke")
        made.append(real(is_cancelled=is_cancelled))
        return made[-1]

    monkeypatch.setattr(jam, "next_segment", next_segment)
    with pytest.raises(RuntimeError, match="the engine broke"):
        run_jam(jam, folder, should_stop=lambda: False, for_seconds=10.0)
    assert sorted(p.name for p in folder.iterdir()) == ["segment-0000.wav", "segment-0001.wav"]


class _RecordingPlayer:
    """A stand-in for the output device (unit test): records what the runner asks of it."""

    sample_rate = 32000
    channels = 2
    underruns = 0

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        self.queued = 0.0
        self.open_start_seconds: float | None = None

    def open(self, record=False, start_seconds=None):
        self.open_start_seconds = start_seconds

    def write(self, data):
        self.queued += data.shape[1] / self.sample_rate
        return data.shape[1]

    def start(self):
        self.events.append(("start", self.queued))

    def finish(self):
        self.events.append(("finish", self.queued))

    def wait(self, timeout=None):
        return True

    def stop(self):
        self.events.append(("stop", self.queued))


def _slowed(jam, generation_seconds):
    """Make every segment report ``generation_seconds`` of generation (as a slow machine would)."""
    import dataclasses

    real = jam.next_segment

    def next_segment(is_cancelled=None):
        return dataclasses.replace(real(is_cancelled=is_cancelled), generation_seconds=generation_seconds)

    jam.next_segment = next_segment
    return jam


def test_playback_waits_for_two_segments_when_faster_than_real_time(tiny_engine, tmp_path):
    from bridge.app.jam import run_jam

    player = _RecordingPlayer()
    warnings: list[str] = []
    jam = _slowed(Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=2)), 0.5)
    take = run_jam(jam, tmp_path / "jam", should_stop=lambda: False, player=player, for_seconds=8.0,
                   warn=warnings.append)
    assert player.open_start_seconds is not None and player.open_start_seconds > 60  # the runner decides
    kind, queued_at_start = player.events[0]
    assert kind == "start" and queued_at_start >= 4.0 - 0.05  # two 2 s bars (less the resampler's hold-back)
    assert take.preroll_seconds == 4.0 and warnings == []
    assert take.realtime_factor == pytest.approx(4.0)


def test_a_slow_machine_pre_rolls_and_says_so_once(tiny_engine, tmp_path):
    from bridge.app.jam import SLOW_MARGIN, run_jam

    player = _RecordingPlayer()
    warnings: list[str] = []
    jam = _slowed(Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=2)), 4.0)  # 0.5x
    take = run_jam(jam, tmp_path / "jam", should_stop=lambda: False, player=player, for_seconds=12.0,
                   warn=warnings.append)
    assert len(warnings) == 1 and "0.50x real time" in warnings[0]
    # enough that the rest is generated while the queue plays: 12 * (1 - 0.5) * margin + one bar, in whole bars
    needed = 12.0 * 0.5 * SLOW_MARGIN + 2.0
    assert take.preroll_seconds == pytest.approx(2.0 * -(-needed // 2.0))
    assert [e[0] for e in player.events] == ["start", "finish"]


def test_a_slow_machine_s_pre_roll_for_a_long_jam_stops_at_the_horizon(tiny_engine, tmp_path):
    # `--for 7200` on a machine at half real time: the pre-roll aims at the first minute without a gap,
    # not at two hours of audio queued (and buffered) before anything plays.
    from bridge.app.jam import SLOW_MARGIN, run_jam
    from bridge.app.output import PLAYER_BUFFER_SECONDS, PREROLL_HORIZON

    player = _RecordingPlayer()
    warnings: list[str] = []
    jam = _slowed(Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=4, seed=2)), 16.0)  # 0.5x
    take = run_jam(jam, tmp_path / "jam", should_stop=lambda: bool(player.events), player=player,
                   for_seconds=7200.0, warn=warnings.append)
    assert len(warnings) == 1 and f"so {PREROLL_HORIZON:.0f} s play without a gap" in warnings[0]
    needed = PREROLL_HORIZON * 0.5 * SLOW_MARGIN + 8.0
    assert take.preroll_seconds == pytest.approx(8.0 * -(-needed // 8.0))  # whole 8 s segments
    assert take.preroll_seconds < PLAYER_BUFFER_SECONDS  # and it fits the device's buffer
    assert player.events[0][0] == "start"


def test_a_jam_whose_device_will_not_open_leaves_nothing_behind(tiny_engine, tmp_path):
    from bridge.app.jam import run_jam
    from bridge.errors import NoAudioDevice

    class _NoDevice(_RecordingPlayer):
        def open(self, record=False, start_seconds=None):
            raise NoAudioDevice("no audio device")

    folder = tmp_path / "jam"
    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=2))
    with pytest.raises(NoAudioDevice):
        run_jam(jam, folder, should_stop=lambda: False, player=_NoDevice(), for_seconds=4.0)
    assert list(folder.iterdir()) == []  # no take, no temporary


def _fp32_jam(engine, **settings):
    return Jam(engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=5, top_k=50, **settings))


def test_a_carried_jam_gives_the_tokens_of_one_uninterrupted_generation(tiny_engine):
    """fp32: three segments continue one token stream (one generator through the jam), so the timeline is
    what one generation of that length draws with the same seed, and the decoder ran each position once."""
    from bridge.engine import GenerationSpec
    from bridge.engine.decoding import Sampling

    assert tiny_engine.loaded.precision == "fp32"
    jam = _fp32_jam(tiny_engine)
    for _ in range(3):
        jam.next_segment()
    frames = jam.codes.shape[-1]
    delay = tiny_engine.loop.max_delay
    assert frames == 3 * 100 + 4  # three 2 s bars at 50 Hz and the codec's lookahead
    # one generation pads every codebook after its last frame: ask for the delay's frames more
    spec = GenerationSpec(prompt=tempo.tempo_text("lofi", 120.0, 4), frames=frames + delay, seed=5,
                          sampling=Sampling(temperature=1.0, top_k=50, guidance=3.0))
    whole = tiny_engine.generate_codes(spec)
    assert torch.equal(jam.codes, whole[:, :, :frames])
    assert jam.reprompts == 0
    assert jam.positions_run == frames + delay  # no segment re-read the context


def test_prompt_and_guidance_changes_keep_the_decoder_state(tiny_engine):
    """A new prompt swaps the text the decoder attends to and guidance goes to 1 and back: no re-prompt,
    no re-read, the tokens before the change are the unchanged jam's and the ones after differ."""
    plain, changed = _fp32_jam(tiny_engine), _fp32_jam(tiny_engine)
    plain.next_segment()
    changed.next_segment()
    before = changed.codes.shape[-1]
    for change in ({"prompt": "techno"}, {"guidance": 1.0}, {"guidance": 3.0, "prompt": ""}):
        changed.set(change)
        changed.next_segment()
        plain.next_segment()
    assert changed.reprompts == 0 and changed.positions_run == changed.codes.shape[-1] + tiny_engine.loop.max_delay
    assert torch.equal(changed.codes[:, :, :before], plain.codes[:, :, :before])
    assert not torch.equal(changed.codes[:, :, before : before + 100], plain.codes[:, :, before : before + 100])
    assert (changed.codes < tiny_engine.loaded.pad_token_id).all()


def test_the_jam_reprompts_only_when_the_window_fills(tiny_loaded):
    """A 250-frame window holds two one-bar segments (and the lookahead); the third starts a fresh window
    from the timeline's tail. The audio stays one continuous decode across it."""
    from bridge.engine import Engine

    engine = Engine(tiny_loaded, window_frames=250)
    jam = _fp32_jam(engine)
    segments = [jam.next_segment(), jam.next_segment()]
    assert jam.reprompts == 0
    segments += [jam.next_segment(), jam.next_segment()]
    assert jam.reprompts >= 1
    assert jam.codes.shape[-1] == 4 * 100 + 4 and (jam.codes < tiny_loaded.pad_token_id).all()
    take = np.concatenate([s.audio for s in segments], axis=-1)
    whole = engine.decode(jam.codes)[0][:, : take.shape[-1]]
    assert take.shape[-1] == 4 * 64000 and float(np.abs(take - whole).max()) < 1e-5


def test_a_cancelled_segment_loses_nothing(tiny_engine):
    """Cancelled half way, the jam keeps what it sampled; the next segment continues the same tokens."""
    from bridge.errors import Cancelled

    plain, cancelled = _fp32_jam(tiny_engine), _fp32_jam(tiny_engine)
    calls = itertools.count()
    with pytest.raises(Cancelled):
        cancelled.next_segment(is_cancelled=lambda: next(calls) >= 40)
    assert 0 < cancelled.codes.shape[-1] < 104
    for jam in (plain, cancelled):
        jam.next_segment()
    assert cancelled.index == 1 and cancelled.next_sample == plain.next_sample == 64000
    assert torch.equal(cancelled.codes, plain.codes)
