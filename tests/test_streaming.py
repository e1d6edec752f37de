"""Chunked codec decoding: chunks joined equal the one-shot decode, each chunk decoded once."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from bridge.app.results import Chunk
from bridge.engine.streaming import StreamingDecoder


def test_chunks_joined_match_one_shot_decode(tiny_engine):
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2048, (1, 4, 230), generator=gen)
    full = tiny_engine.decode(codes)
    decoder = StreamingDecoder(tiny_engine, start_frame=0, total_frames=230)
    chunks = []
    for complete in range(0, 231, 7):  # frames arrive a few at a time, as from the token loop
        chunks += decoder.feed(codes, complete)
    chunks += decoder.feed(codes, 230)
    assert decoder.finished
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.start for c in chunks] == list(range(0, 230, 25))
    joined = np.concatenate([c.audio for c in chunks], axis=-1)
    assert joined.shape == full.shape
    assert float(np.abs(joined - full).max()) < 1e-5


def test_no_chunk_before_its_lookahead_is_complete(tiny_engine):
    codes = torch.zeros((1, 4, 100), dtype=torch.long)
    decoder = StreamingDecoder(tiny_engine, start_frame=40, total_frames=100)
    assert decoder.feed(codes, 68) == []  # chunk 40..65 needs frames up to 69
    first = decoder.feed(codes, 69)
    assert [(c.start, c.end) for c in first] == [(40, 65)]
    assert first[0].audio.shape[-1] == 25 * tiny_engine.hop


def _stream_job(bridge, mode="text", clip=None, seconds=2.0, **options):
    chunks: list[Chunk] = []
    request = bridge.make_request(mode, "lofi", seconds, str(clip) if clip else None,
                                  {"stream": 1, "seed": 9} | options)
    result = bridge.run("s1", request, lambda _f: None, lambda: False, on_chunk=chunks.append)
    return result, chunks


def _joined(chunks):
    import soundfile as sf

    return np.concatenate([sf.read(c.path, always_2d=True)[0] for c in chunks], axis=0)


def test_stream_job_chunks_equal_the_final_file(tiny_bridge):
    import soundfile as sf

    result, chunks = _stream_job(tiny_bridge, seconds=2.1)
    final, _rate = sf.read(result.paths[0], always_2d=True)
    assert final.shape[0] == round(2.1 * 32000)
    assert [c.index for c in chunks] == list(range(len(chunks))) and len(chunks) == 5
    starts = [c.start_seconds for c in chunks]
    assert starts[0] == 0 and all(abs(a.start_seconds + a.seconds - b.start_seconds) < 1e-9
                                  for a, b in itertools.pairwise(chunks))
    np.testing.assert_array_equal(_joined(chunks), final)


def test_stream_matches_the_unstreamed_result_closely(tiny_bridge):
    import soundfile as sf

    streamed, _ = _stream_job(tiny_bridge, seconds=1.5)
    request = tiny_bridge.make_request("text", "lofi", 1.5, None, {"seed": 9})
    plain = tiny_bridge.run("p1", request, lambda _f: None, lambda: False)
    a = sf.read(streamed.paths[0])[0]
    b = sf.read(plain.paths[0])[0]
    assert a.shape == b.shape
    assert float(np.abs(a - b).max()) < 1e-4  # same tokens; chunked decode differs at float precision


def test_stream_continuation_at_44k_stereo(tiny_bridge, make_clip):
    import soundfile as sf

    clip = make_clip(seconds=2.0, rate=44100, channels=2)
    result, chunks = _stream_job(tiny_bridge, "continue", clip=clip, seconds=1.3)
    final, rate = sf.read(result.paths[0], always_2d=True)
    assert rate == 44100 and final.shape == (round(1.3 * 44100), 2)
    np.testing.assert_array_equal(_joined(chunks), final)


def test_stream_refuses_options_it_cannot_honour(tiny_bridge):
    import pytest

    from bridge.errors import BadArgs

    with pytest.raises(BadArgs, match="one variation"):
        tiny_bridge.make_request("text", "x", 1.0, None, {"stream": 1, "variations": 2})
