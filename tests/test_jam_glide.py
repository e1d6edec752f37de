"""Prompt glides (issue 15): `glide_bars N` moves the jam's text conditioning, guidance and temperature over N bars."""

from __future__ import annotations

import itertools

import pytest
import torch

from bridge.engine.decoding import Conditioning
from bridge.engine.glide import Glide
from bridge.engine.jam import Jam, JamSettings
from bridge.errors import BadArgs


def _jam(engine, **changes):
    return Jam(engine, JamSettings(prompt="warm pad", bpm=120.0, bars=1, seed=3, **changes))


def test_a_glide_moves_from_the_old_text_to_the_new_over_its_bars(tiny_engine):
    jam = _jam(tiny_engine)
    jam.next_segment()
    jam.set({"prompt": "bright bells", "glide_bars": 2, "guidance": 5.0})
    glides = []
    for _ in range(3):
        jam.next_segment()
        glides.append(list(jam.glide_log))
    bar_frames = round(tiny_engine.loaded.frame_rate * 2.0)  # a 4/4 bar at 120 bpm is 2 s
    steps = glides[-1]
    distances = [d for _, d in steps]
    assert distances[0] > 0.8 and distances[-1] == 0.0
    assert all(a >= b for a, b in itertools.pairwise(distances))  # closer at every step
    # the glide starts at the change's segment and arrives two bars later, then the stream holds the new text
    first_frame = steps[0][0]
    arrived = next(f for f, d in steps if d == 0.0)
    assert bar_frames <= first_frame <= bar_frames + bar_frames // 8  # from the bar line of the change
    assert 3 * bar_frames <= arrived <= 3 * bar_frames + bar_frames // 8 + 4  # two bars later
    assert jam._glide is None and jam._text is not None and "bright bells" in jam._text[0]  # (text, negative)
    # per bar: the mean distance from the new conditioning falls bar after bar
    per_bar: dict[int, list[float]] = {}
    for frame, distance in steps:
        per_bar.setdefault((frame - first_frame) // bar_frames, []).append(distance)
    means = [sum(v) / len(v) for _, v in sorted(per_bar.items())]
    assert means == sorted(means, reverse=True) and means[0] > means[-1]


def test_glide_bars_0_is_a_jump(tiny_engine):
    jam = _jam(tiny_engine)
    jam.next_segment()
    jam.set({"prompt": "bright bells"})
    jam.next_segment()
    assert jam.glide_log == [] and jam._text is not None and "bright bells" in jam._text[0]


def test_a_glide_is_a_different_path_from_a_jump(tiny_engine):
    jumped, glided = _jam(tiny_engine), _jam(tiny_engine)
    for jam in (jumped, glided):
        jam.next_segment()
    jumped.set({"prompt": "bright bells"})
    glided.set({"prompt": "bright bells", "glide_bars": 4})
    a, b = jumped.next_segment(), glided.next_segment()
    assert a.audio.shape == b.audio.shape and not torch.equal(torch.from_numpy(a.audio), torch.from_numpy(b.audio))


def test_glide_bars_out_of_range_is_refused(tiny_engine):
    jam = _jam(tiny_engine)
    with pytest.raises(BadArgs, match=r"glide_bars must be from 0 to 64, got 65"):
        jam.set({"prompt": "x", "glide_bars": 65})


def test_the_glide_is_a_straight_line_between_texts_of_different_lengths():
    short = Conditioning(encoder_hidden_states=torch.ones(2, 3, 4), encoder_attention_mask=torch.ones(2, 3, dtype=torch.long))
    long = Conditioning(encoder_hidden_states=torch.full((2, 5, 4), 3.0),
                        encoder_attention_mask=torch.ones(2, 5, dtype=torch.long))
    glide = Glide(short, long, ("long", ""), guidance=(3.0, 5.0), temperature=(1.0, 0.5), first=100, last=200)
    cond, g, t, distance = glide.at(150)
    assert cond.encoder_hidden_states is not None and cond.encoder_attention_mask is not None
    assert cond.encoder_hidden_states.shape == (2, 5, 4)
    assert torch.allclose(cond.encoder_hidden_states[:, :3], torch.full((2, 3, 4), 2.0))
    assert torch.allclose(cond.encoder_hidden_states[:, 3:], torch.full((2, 2, 4), 1.5))
    assert cond.encoder_attention_mask.tolist() == [[1] * 5] * 2
    assert (g, t, distance) == (4.0, 0.75, pytest.approx(0.5))
    at_start = glide.at(100)[0].encoder_hidden_states
    assert at_start is not None and at_start.shape == (2, 5, 4) and glide.at(200)[0] is long
    assert glide.at(100)[3] == pytest.approx(1.0) and glide.at(250)[3] == 0.0


def test_a_preset_glides_in_when_glide_bars_comes_with_it(tiny_engine, tmp_path):
    from pathlib import Path

    from bridge.app.jam import JamController
    from bridge.app.output import OutputDevice
    from bridge.app.presets import PresetLibrary
    from bridge.app.store import ResultStore

    library = PresetLibrary.load(Path(__file__).resolve().parent.parent / "presets")
    controller = JamController(OutputDevice(), ResultStore(tmp_path), library)
    jam = _jam(tiny_engine)
    controller._jam = jam  # as while a jam runs (the worker's run() sets it)
    jam.next_segment()
    applied = controller.set({"preset": "lofi/keys", "glide_bars": 2})
    assert applied["glide_bars"] == 2 and applied["prompt"] == library.get("lofi", "keys").prompt
    jam.next_segment()
    assert jam.glide_log and jam.glide_log[0][1] > 0.8  # gliding from the old prompt, not jumped
