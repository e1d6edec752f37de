"""The jam: MusicGen keeps continuing its own output, segment after segment, in whole bars.

The jam keeps one :class:`bridge.engine.decoding.TokenStream` going: its KV cache, positions and the text's
keys and values carry over, so a segment costs only its own steps, never a re-read of the context.
Its tokens are exactly those of one uninterrupted generation with the same seed (one generator runs
through the jam; a ``seed`` change re-seeds it at that segment). The audio is one continuous stream
cut at bar boundaries on the absolute sample grid. Changes (prompt, temperature, guidance, ...) wait
for the next segment: sampling ones just apply, a new prompt swaps the text the decoder attends to
(the cached positions stay), and the stream always runs the guidance batch's two rows, so guidance
can go to 1 and back without re-reading anything. Only when the model's window (~30 s of positions)
fills does the jam re-prompt a fresh window from the last ``context_seconds`` of tokens (melody
checkpoints also on a prompt change: their text is part of the sequence). No threads here: a runner
(``bridge.app.jam``, for the daemon and the CLI) calls :meth:`Jam.next_segment` from the worker that owns the engine.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bridge import tempo
from bridge.engine.decoding import Sampling, TokenStream
from bridge.engine.engine import Engine
from bridge.engine.glide import Glide
from bridge.engine.streaming import DEFAULT_LEFT_CONTEXT, DEFAULT_LOOKAHEAD
from bridge.errors import BadArgs
from bridge.options import OPTIONS, check_fields, closest, convert_option, jam_default, names, pick_seed

MAX_SEGMENT_SECONDS = 20.0


@dataclass(frozen=True)
class JamSettings:
    """What the next segment is generated with; ``Jam.set`` swaps it for a changed copy.

    The prompt and the ``jam`` options of :data:`bridge.options.OPTIONS`, with the table's jam defaults
    (``check_fields`` holds them to it at import).
    """

    prompt: str = ""
    bpm: float = jam_default("bpm")
    bars: int = jam_default("bars")
    beats_per_bar: int = jam_default("beats_per_bar")
    temperature: float = jam_default("temperature")
    guidance: float = jam_default("guidance")
    top_k: int = jam_default("top_k")
    top_p: float = jam_default("top_p")
    negative: str = jam_default("negative")
    seed: int | None = jam_default("seed")  # None: the jam draws one at random (the table's default)
    context_seconds: float = jam_default("context_seconds")
    glide_bars: int = jam_default("glide_bars")

    def check(self) -> JamSettings:
        """Raise BadArgs (the same words as for a request) for a value out of range; return self."""
        for name in names("jam"):
            OPTIONS[name].check(getattr(self, name))
        seconds = float(tempo.bar_seconds(self.bpm, self.beats_per_bar)) * self.bars
        if seconds > MAX_SEGMENT_SECONDS:
            raise BadArgs(f"a jam segment of {self.bars} bars at {self.bpm:g} bpm is {seconds:.1f} s: "
                          f"give 1 bar or more and at most {MAX_SEGMENT_SECONDS:g} s a segment")
        if self.negative.strip() and self.guidance <= 1.0:
            raise BadArgs(f"a negative prompt works through guidance, and guidance {self.guidance:g} turns it off: "
                          "set guidance above 1 (3 is the usual) or set negative to \"\"")
        return self


check_fields(JamSettings, ("jam",), ("prompt",), jam=True)
_SETTABLE = {f.name for f in dataclasses.fields(JamSettings)}


@dataclass(frozen=True)
class Segment:
    """One bar-aligned piece of the jam: ``audio`` is (channels, samples) at the model rate."""

    index: int
    start_sample: int
    audio: np.ndarray
    settings: JamSettings
    generation_seconds: float


class Jam:
    """A token timeline and the bar grid it is cut on."""

    def __init__(self, engine: Engine, settings: JamSettings) -> None:
        self.engine = engine
        if settings.seed is None:
            settings = dataclasses.replace(settings, seed=pick_seed())
        self._settings = settings.check()
        self._pending: JamSettings | None = None
        self._lock = threading.Lock()
        self.codes = torch.zeros((1, engine.loaded.num_codebooks, 0), dtype=torch.long, device=engine.loaded.device)
        self.index = 0
        self.next_sample = 0  # where the next segment starts on the absolute grid (model rate)
        self._grid_bars = 0  # bars since the last tempo change
        self._grid_origin = 0  # sample where the current tempo's grid starts
        self._stream: TokenStream | None = None
        self._stream_start = 0  # the frame of the timeline where the stream's window starts
        self._text: tuple[str, str] | None = None  # the (text, negative prompt) the stream attends to
        self._seed = int(self._settings.seed or 0)
        self._generator = torch.Generator(device=engine.loaded.device).manual_seed(self._seed)
        self._glide: Glide | None = None
        self.glide_log: list[tuple[int, float]] = []  # (frame, distance of the conditioning from the glide's end)
        self.reprompts = 0  # fresh windows started from the timeline's tail (the window filled)
        self.positions_run = 0  # positions the decoder has read, prompts of fresh windows included

    @property
    def settings(self) -> JamSettings:
        return self._settings

    @property
    def pending(self) -> JamSettings | None:
        """The settings queued for the next segment, if any."""
        with self._lock:
            return self._pending

    def set(self, changes: Mapping[str, Any]) -> JamSettings:
        """Queue changes for the next segment; returns the settings that segment will use."""
        with self._lock:
            base = self._pending or self._settings
            typed: dict[str, Any] = {}
            for key, value in changes.items():
                if key not in _SETTABLE:
                    raise BadArgs(f"jam cannot set {key!r}{closest(key, _SETTABLE)}; it can set "
                                  f"{', '.join(sorted(_SETTABLE))}")
                typed[key] = str(value) if key == "prompt" else convert_option(key, value, scope="jam")
            self._pending = dataclasses.replace(base, **typed).check()
            return self._pending

    def _take_pending(self) -> JamSettings:
        with self._lock:
            if self._pending is not None:
                if (self._pending.bpm, self._pending.beats_per_bar) != (self._settings.bpm,
                                                                        self._settings.beats_per_bar):
                    self._grid_origin, self._grid_bars = self.next_sample, 0  # a new grid from here
                self._settings, self._pending = self._pending, None
            return self._settings

    def _boundary(self, bars: int, s: JamSettings) -> int:
        return self._grid_origin + tempo.bars_to_samples(bars, s.bpm, self.engine.sample_rate, s.beats_per_bar) \
            if bars > 0 else self._grid_origin

    def next_segment(self, is_cancelled: Any = None) -> Segment:
        """Generate and decode the next ``bars`` bars, continuing the token timeline."""
        started = time.monotonic()
        before = self._settings
        s = self._take_pending()
        eng = self.engine
        hop = eng.hop
        start = self.next_sample
        end = self._boundary(self._grid_bars + s.bars, s)
        need_frames = -(-end // hop) + DEFAULT_LOOKAHEAD
        if need_frames > self.codes.shape[-1]:
            if s.seed is not None and s.seed != self._seed:
                self._seed = s.seed
                self._generator.manual_seed(s.seed)
            text = tempo.tempo_text(s.prompt, s.bpm, s.beats_per_bar) if s.prompt.strip() else ""
            sampling = Sampling(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                guidance=s.guidance if text or s.negative.strip() else 1.0)
            glide_from = self._glide_start(before, s, text, start // hop)
            stream = self._stream_for(text, need_frames, s)
            if glide_from is not None:
                self._begin_glide(glide_from, before, s, text, start, end)
            fed = stream.fed
            try:
                if self._glide is not None:
                    self._advance_gliding(stream, need_frames, s, text, is_cancelled)
                else:
                    stream.advance(need_frames - self._stream_start, sampling, self._generator,
                                   is_cancelled=is_cancelled)
            finally:
                self.positions_run += stream.fed - fed
                self._take_frames()
        first = max(0, start // hop - DEFAULT_LEFT_CONTEXT)
        region = eng.decode(self.codes[:, :, first:need_frames])[0]
        audio = region[:, start - first * hop : end - first * hop]
        segment = Segment(index=self.index, start_sample=start, audio=np.ascontiguousarray(audio), settings=s,
                          generation_seconds=time.monotonic() - started)
        self.index += 1
        self._grid_bars += s.bars
        self.next_sample = end
        return segment

    # -- glides (bridge.engine.glide) ---------------------------------------------------------------
    def _glide_start(self, before: JamSettings, s: JamSettings, text: str, frame: int) -> Any:
        """The conditioning a glide starts from, when this segment begins one; None when it jumps."""
        changed = (s.prompt, s.negative, s.guidance, s.temperature) != (before.prompt, before.negative, before.guidance,
                                                                   before.temperature)
        if s.glide_bars <= 0 or not changed or self._stream is None or self._text is None or not text:
            return None
        if self.engine.loaded.is_melody or not self._text[0]:
            return None  # a melody's text is part of the sequence; from silence there is nothing to glide from
        if self._glide is not None:
            return self._glide.at(frame)[0]  # a new glide from where the running one is
        return self._condition(*self._text)

    def _begin_glide(self, start_cond: Any, before: JamSettings, s: JamSettings, text: str, start: int,
                     end: int) -> None:
        hop = self.engine.hop
        last = self._boundary(self._grid_bars + s.glide_bars, s) // hop
        old = self._glide
        guidance = old.guidance[0] + old.fraction(start // hop) * (old.guidance[1] - old.guidance[0]) \
            if old is not None else before.guidance
        temperature = old.temperature[0] + old.fraction(start // hop) * (old.temperature[1] - old.temperature[0]) \
            if old is not None else before.temperature
        self._glide = Glide(start=start_cond, end=self._condition(text, s.negative), end_text=(text, s.negative),
                            guidance=(guidance, s.guidance), temperature=(temperature, s.temperature),
                            first=start // hop, last=max(last, end // hop))

    def _advance_gliding(self, stream: TokenStream, need_frames: int, s: JamSettings, text: str,
                         is_cancelled: Any) -> None:
        """Advance in steps of an eighth of a bar, each conditioned on the glide's point there."""
        glide = self._glide
        if glide is None:
            return
        if (text, s.negative) != glide.end_text:  # the tempo (in the text) changed meanwhile: glide to the new text
            glide.end, glide.end_text = self._condition(text, s.negative), (text, s.negative)
        bar_frames = max(1, round(self.engine.loaded.frame_rate * float(tempo.bar_seconds(s.bpm, s.beats_per_bar))))
        chunk = max(1, bar_frames // 8)
        until = need_frames - self._stream_start
        while stream.complete < until:
            frame = self._stream_start + stream.complete
            cond, guidance, temperature, distance = glide.at(frame)
            stream.set_conditioning(cond)
            self.glide_log.append((frame, distance))
            sampling = Sampling(temperature=temperature, top_k=s.top_k, top_p=s.top_p, guidance=guidance)
            target = until if distance == 0.0 else min(until, stream.complete + chunk)
            before = stream.complete
            stream.advance(target, sampling, self._generator, is_cancelled=is_cancelled)
            if distance == 0.0:
                self._glide = None  # arrived: the stream attends to the new text, as after a jump
                self._text = (text, s.negative)
            if stream.complete == before:
                break  # the window is full: the next segment re-prompts

    def _take_frames(self) -> None:
        """Append the frames the stream completed since the last call (also after a cancelled one)."""
        stream = self._stream
        if stream is None:
            return
        have = self.codes.shape[-1] - self._stream_start
        if stream.complete > have:
            self.codes = torch.cat([self.codes, stream.codes[:, :, have : stream.complete]], dim=-1)

    def _stream_for(self, text: str, need_frames: int, s: JamSettings) -> TokenStream:
        """The stream to continue: the one running, conditioned on ``text``, or a fresh window when
        there is none or ``need_frames`` would not fit in it."""
        eng = self.engine
        stream = self._stream
        fits = stream is not None and need_frames - self._stream_start <= stream.capacity
        key = (text, s.negative)
        if stream is not None and fits and key != self._text:
            try:
                stream.set_conditioning(self._condition(*key))
            except ValueError:  # melody checkpoints: the text is part of the sequence
                fits = False
            else:
                self._text = key
        if stream is not None and fits:
            return stream
        self._take_frames()
        have = self.codes.shape[-1]
        new = need_frames - have
        if new >= eng.window_frames:
            raise BadArgs(f"a jam segment of {new} frames does not fit the model's window of {eng.window_frames}")
        context = min(have, round(s.context_seconds * eng.loaded.frame_rate), eng.window_frames - new - 1)
        prompt = self.codes[:, :, have - context :] if context > 0 else None
        if stream is not None:
            self.reprompts += 1
        self._stream = eng.loop.stream(self._condition(*key), 1, eng.window_frames, guided=True, prompt=prompt)
        self._stream_start, self._text = have - context, key
        return self._stream

    def _condition(self, text: str, negative: str = "") -> Any:
        # both rows of the guidance batch always: guidance may change at any segment
        return self.engine.condition(text, 1, Sampling(guidance=3.0), None, negative)
