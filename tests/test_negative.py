"""Negative prompts: guidance pushes away from a text instead of the empty one (issue 17)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from bridge.engine.decoding import Sampling, guided_logits
from bridge.engine.jam import Jam, JamSettings
from bridge.errors import BadArgs
from bridge.options import Request


def _first_logits(engine, cond, rows):
    """Logits (rows, K, V) the decoder gives after the start token under ``cond``."""
    loop = engine.loop
    step = loop.stepper(cond, rows, 8)
    start = torch.full((rows, loop.num_codebooks, 1), loop.pad, dtype=torch.long)
    return step(start)


def test_guided_logits_follow_the_formula_with_the_negative_text_as_uncond(tiny_engine):
    g = 3.0
    guided = Sampling(guidance=g)
    plain = Sampling(guidance=1.0)
    with_negative = _first_logits(tiny_engine, tiny_engine.condition("warm pads", 1, guided, None, "drums"), 2)
    without = _first_logits(tiny_engine, tiny_engine.condition("warm pads", 1, guided, None), 2)
    positive = _first_logits(tiny_engine, tiny_engine.condition("warm pads", 1, plain, None), 1)
    negative = _first_logits(tiny_engine, tiny_engine.condition("drums", 1, plain, None), 1)
    empty = without[1:]
    # the guided batch's rows are exactly the two texts' own logits
    torch.testing.assert_close(with_negative[:1], positive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_negative[1:], negative, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(without[:1], positive, atol=1e-5, rtol=1e-5)
    got = guided_logits(with_negative, 1, g)
    torch.testing.assert_close(got, negative + g * (positive - negative), atol=1e-4, rtol=1e-5)
    # against the plain guidance: the difference is (1 - g) * (negative - empty), and it is not nothing
    delta = got - guided_logits(without, 1, g)
    torch.testing.assert_close(delta, (1 - g) * (negative - empty), atol=1e-4, rtol=1e-5)
    assert float(delta.abs().max()) > 1e-3


def test_a_negative_prompt_changes_the_audio_and_the_sidecar_keeps_it(tiny_bridge):
    def run(**options):
        # guidance 8: the random tiny model hears its text faintly, so the difference needs a strong push
        request = tiny_bridge.make_request("text", "lofi", 1.0, None, {"seed": 3, "guidance": 8.0, **options})
        return tiny_bridge.run("n", request, lambda f: None, lambda: False)

    plain, negative, again = run(), run(negative="drums, vocals"), run(negative="drums, vocals")
    a, b, c = (sf.read(r.paths[0])[0] for r in (plain, negative, again))
    assert a.shape == b.shape and not np.array_equal(a, b)
    np.testing.assert_array_equal(b, c)
    sidecar = json.loads(negative.sidecars[0].read_text())
    assert sidecar["options"]["negative"] == "drums, vocals"


def test_a_negative_prompt_without_guidance_is_refused(tiny_bridge):
    with pytest.raises(BadArgs, match="guidance 1 turns it off"):
        tiny_bridge.make_request("text", "lofi", 1.0, None, {"negative": "drums", "guidance": 1.0})
    with pytest.raises(BadArgs, match=r"guidance 0\.5 turns it off"):
        Request(seconds=1.0, negative="drums", guidance=0.5).validate()
    Request(seconds=1.0, negative="", guidance=1.0).validate()  # no negative: guidance 1 is fine


def test_a_negative_prompt_longer_than_the_text_encoder_takes_is_refused_before_the_model_runs(tiny_bridge):
    with pytest.raises(BadArgs, match="negative prompt is 301 tokens long and the text encoder takes at most 256"):
        tiny_bridge.make_request("text", "lofi", 1.0, None, {"negative": "x" * 300})


def test_the_jam_takes_a_negative_prompt_at_its_next_segment(tiny_engine):
    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=2))
    first = jam.next_segment()
    jam.set({"negative": "drums"})
    second = jam.next_segment()
    assert (first.settings.negative, second.settings.negative) == ("", "drums")
    with pytest.raises(BadArgs, match="turns it off"):
        jam.set({"guidance": 1.0})
    reference = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=2))
    reference.next_segment()
    plain_second = reference.next_segment()
    assert not np.array_equal(second.audio, plain_second.audio)
