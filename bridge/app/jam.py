"""The jam controller: one jam at a time, started by a job, changed and stopped from any front end.

:class:`JamController` is what the front ends talk to (``set``, ``stop``, ``running``); it is locked,
and the worker that owns the engine runs the jam through it (:meth:`JamController.run`), holding the
output device for the jam's whole life (``bridge.app.output``). :func:`run_jam` turns segments from
:class:`bridge.engine.jam.Jam` into files, announcements and the speakers.

The worker calls :func:`run_jam`; it returns when ``should_stop`` turns true
(checked between segments and between decoding steps) or after ``for_seconds`` of audio. Where the
machine generates slower than real time it says so and pre-rolls enough audio before playback
starts to play the asked length without a gap.

The run-ahead: playback starts once ``PREROLL_SEGMENTS`` segments are queued (or the whole take, when
it is shorter), so while one segment plays the next is already waiting and the one after has a whole
segment's time, plus what is left of the playing one, to be generated. A hiccup of up to a segment
(another program taking the CPU, a page fault storm) is absorbed instead of heard.

A jam that writes files only (``play 0``) for a DAW's timeline is paced by ``ahead_bars``: it begins a
segment no earlier than ``ahead_bars`` bars (at the tempo of the moment) before that segment is due, the
first segment's arrival being its time zero, so a prompt changed with ``set`` is heard within that many
bars instead of after everything a fast machine has run ahead. Where the machine needs longer, the lead
is twice the slowest segment's making time (``LEAD_PER_GENERATION``, as the synced jam's), so every
segment is still ready before it is due.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bridge import audio, tempo
from bridge.app.jam_sync import LEAD_PER_GENERATION, run_synced_jam
from bridge.app.link import BarClock, LinkSession
from bridge.app.midi_clock import MidiClock
from bridge.app.output import OutputDevice, preroll_target
from bridge.app.results import Chunk, JamTake, JobResult
from bridge.app.storage import check_output_folder
from bridge.app.store import ResultStore
from bridge.audio import StreamResampler
from bridge.engine import Engine
from bridge.engine.jam import Jam, JamSettings
from bridge.errors import BadArgs, Busy, Cancelled, NoAudioDevice, NotFound
from bridge.options import Request, jam_fields, pick_seed

log = logging.getLogger(__name__)

MIDI_CLOCK_WAIT = 10.0  # seconds a sync midi jam waits for clock pulses
PREROLL_SEGMENTS = 2  # segments queued before playback starts on a machine faster than real time
SLOW_MARGIN = 1.15  # pre-roll headroom over the measured speed
_NEVER_BY_ITSELF = 1e9  # seconds: the runner, not the player, decides when playback starts
PACE_POLL = 0.05  # seconds: how often a paced jam waiting for its next segment's time checks for a stop


def preroll_for(speed: float, segment_seconds: float, total_seconds: float) -> float:
    """Seconds of audio to queue before playback so ``total_seconds`` play gaplessly.

    ``speed`` is seconds of audio generated per second (the slowest seen). Faster than real time:
    ``PREROLL_SEGMENTS`` segments. Slower: enough that generation finishes the rest while the queue
    plays, with ``SLOW_MARGIN`` headroom, and never less than the fast case.
    """
    fast = PREROLL_SEGMENTS * segment_seconds
    if speed >= 1.0:
        return min(fast, total_seconds)
    slow = total_seconds * (1.0 - speed) * SLOW_MARGIN + segment_seconds
    return min(total_seconds, max(fast, slow))


def run_jam(jam: Jam, folder: Path, should_stop: Callable[[], bool], player: Any | None = None,
            on_segment: Callable[[int, Path, float, float], None] | None = None, for_seconds: float | None = None,
            record: Path | None = None, warn: Callable[[str], None] | None = None, ahead_bars: int = 0) -> JamTake:
    """Generate segments until stopped (or ``for_seconds``), playing them through ``player`` if given;
    without a player, at most ``ahead_bars`` bars ahead of real time (0: as fast as it can)."""
    folder.mkdir(parents=True, exist_ok=True)
    rate = jam.engine.sample_rate
    take = JamTake(path=folder / "take.wav")
    # the take goes to disk as it grows (a long jam holds one segment in memory, not the take); with
    # nothing played, the record is the take itself
    copies = [take.path] + ([record] if player is None and record is not None else [])
    files = audio.StreamWriter(copies, rate, jam.engine.channels)
    audio_seconds = 0.0
    resampler: StreamResampler | None = None
    started_playing = False
    warned = False
    queued = 0.0
    began = time.monotonic()
    zero: float | None = None  # when the first segment was ready: the time the others are due from
    total = preroll_target(for_seconds)
    try:
        if player is not None:
            player.open(record=record if record is not None else False, start_seconds=_NEVER_BY_ITSELF)
        while not should_stop() and (for_seconds is None or audio_seconds < for_seconds):
            if ahead_bars and player is None and zero is not None:
                current = jam.settings
                ahead = max(ahead_bars * float(tempo.bar_seconds(current.bpm, current.beats_per_bar)),
                            LEAD_PER_GENERATION * max(take.generation_seconds))
                if not _wait_until(zero + audio_seconds - ahead, should_stop):
                    break
            try:
                segment = jam.next_segment(is_cancelled=should_stop)
            except Cancelled:
                break  # stopped mid-segment: the take ends with the last whole segment
            if take.first_audio_seconds is None:
                zero = time.monotonic()
                take.first_audio_seconds = zero - began
            path = folder / f"segment-{segment.index:04d}.wav"
            audio.write_atomic(path, segment.audio, rate)
            take.segments.append(path)
            files.write(segment.audio)
            seconds = segment.audio.shape[-1] / rate
            audio_seconds += seconds
            take.segment_seconds.append(seconds)
            take.generation_seconds.append(segment.generation_seconds)
            if on_segment is not None:
                on_segment(segment.index, path, segment.start_sample / rate, seconds)
            speed = 1.0 / max(take.slowest_ratio(), 1e-9)
            preroll = preroll_for(speed, seconds, total)
            if speed < 1.0 and player is not None and not warned and not started_playing:
                warned = True
                (warn or log.warning)(f"this machine generates at {speed:.2f}x real time: pre-rolling {preroll:.1f} s "
                                      f"before playback so {total:.0f} s play without a gap")
            if player is not None:
                if resampler is None:
                    resampler = StreamResampler(rate, player.sample_rate, segment.audio.shape[0])
                data = audio.match_channels(resampler.push(segment.audio), player.channels)
                player.write(data)
                queued += data.shape[1] / player.sample_rate
                # the resampler holds back a few milliseconds: count the segment as queued in full
                if not started_playing and audio_seconds >= preroll - 1e-9:
                    player.start()
                    started_playing = True
                    take.preroll_seconds = audio_seconds
        if player is not None:
            if resampler is not None:
                player.write(audio.match_channels(resampler.flush(), player.channels))
            player.finish()
            if not started_playing:
                take.preroll_seconds = audio_seconds
            started_playing = True  # finish starts whatever is queued
            player.wait(timeout=queued + 10.0)
            take.underruns = player.underruns
            if record is not None:
                take.record_path = record
    except BaseException:
        files.abort()
        raise
    finally:
        if player is not None and not started_playing:
            player.stop()
    files.close()
    if player is None and record is not None:
        take.record_path = record
    take.seconds = files.frames / rate
    if sum(take.generation_seconds) > 0:
        take.realtime_factor = audio_seconds / sum(take.generation_seconds)
    return take


def _wait_until(deadline: float, should_stop: Callable[[], bool]) -> bool:
    """Sleep until ``deadline`` (monotonic seconds); False when told to stop first."""
    while not should_stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, PACE_POLL))
    return False


class JamController:
    """The running jam, if any: started by the worker, changed and stopped from any thread."""

    def __init__(self, output: OutputDevice, store: ResultStore, presets: Any | None = None,
                 link: LinkSession | None = None, midi: MidiClock | None = None) -> None:
        self.link = link
        self.midi = midi
        self.output = output
        self.store = store
        self.presets = presets
        self._lock = threading.Lock()
        self._jam: Jam | None = None
        self._job_id: str | None = None
        self._stop = threading.Event()
        self._stopped_by = ""

    @property
    def running(self) -> bool:
        with self._lock:
            return self._jam is not None

    @property
    def job_id(self) -> str | None:
        with self._lock:
            return self._job_id

    def set(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change the running jam from its next segment on; a ``preset`` key brings a preset's prompt and
        sampling options (the jam keeps its tempo and bar length)."""
        changes = dict(changes)
        if "preset" in changes:
            bank, _, name = str(changes.pop("preset")).partition("/")
            if self.presets is None or not name:
                raise BadArgs("preset wants bank/name, and the bridge needs --presets DIR")
            preset_request: Request = self.presets.request(bank, name, {})
            changes = {"prompt": preset_request.prompt, **jam_fields(preset_request, groups=("sampling",))} | changes
        with self._lock:
            jam = self._jam
            if jam is None:
                raise NotFound("no jam is running: start one with /musicgen/jam/start")
            if "negative" in changes:
                jam.engine.check_text(str(changes["negative"]), "negative prompt")
            return dataclasses.asdict(jam.set(changes))

    def stop(self) -> None:
        """Stop the jam at the end of the segment being made; NotFound when none runs."""
        if not self._request_stop("jam stop"):
            raise NotFound("no jam is running: nothing to stop")

    def _stop_from_output(self) -> None:
        self._request_stop("output stop")

    def _request_stop(self, why: str) -> bool:
        with self._lock:
            if self._jam is None:
                return False
            if not self._stop.is_set():
                self._stopped_by = why
                self._stop.set()
            return True

    def run(self, engine: Engine, job_id: str, request: Request, is_cancelled: Callable[[], bool],
            on_chunk: Callable[[Chunk], None] | None = None,
            on_warning: Callable[[str], None] | None = None) -> JobResult:
        """Run a jam job on ``engine`` until it is stopped, cancelled or has played ``request.seconds``.
        Blocks: the worker that owns the engine calls it. A ``sync link`` jam holds the bridge in the Link
        session while it runs (:meth:`LinkSession.hold`)."""
        clock = self._clock_for(request.sync, is_cancelled)
        try:
            return self._run(engine, job_id, request, clock, is_cancelled, on_chunk, on_warning)
        finally:
            if clock is not None and clock is self.link:
                self.link.release()

    def _run(self, engine: Engine, job_id: str, request: Request, clock: BarClock | None,
             is_cancelled: Callable[[], bool], on_chunk: Callable[[Chunk], None] | None,
             on_warning: Callable[[str], None] | None) -> JobResult:
        fields = jam_fields(request) | ({"bpm": clock.tempo()} if clock is not None else {})
        fields["seed"] = pick_seed(request.seed)  # picked here, not by the Jam: the take reports it
        settings = JamSettings(prompt=request.prompt, **fields).check()
        with self._lock:
            if self._jam is not None:
                raise Busy(f"a jam is already running (job {self._job_id}): stop it first")
            self._jam = Jam(engine, settings)
            self._job_id = job_id
            self._stop.clear()
            self._stopped_by = ""
            jam = self._jam
        check_output_folder(self.store.folder)  # before the model's time is spent
        folder = self.store.jam_folder(self.store.stem(job_id, request))
        record = request.extra.get("record")
        rate = engine.sample_rate

        def should_stop() -> bool:
            return self._stop.is_set() or is_cancelled()

        def warn(message: str) -> None:
            log.warning("jam %s: %s", job_id, message)
            if on_warning is not None:
                on_warning(message)

        def announce(index: int, path: Path, start: float, seconds: float, beat: float = -1.0) -> None:
            if on_chunk is not None:
                on_chunk(Chunk(index=index, path=path, start_seconds=start, seconds=seconds, beat=beat))

        try:
            if request.play:
                try:
                    self.output.check_available()
                except NoAudioDevice as exc:
                    raise NoAudioDevice(f"{exc.message}; or start the jam with play 0 (on the command line: "
                                        "--no-play) to write its segments without playing them") from None
            if clock is not None:
                take = self._run_synced(jam, folder, should_stop, clock, request, announce, warn)
            elif request.play:
                with self.output.for_jam(on_stop=self._stop_from_output) as player:
                    take = run_jam(jam, folder, should_stop, player=player, on_segment=announce,
                                   for_seconds=request.seconds, record=Path(record) if record else None, warn=warn)
            else:
                take = run_jam(jam, folder, should_stop, on_segment=announce, for_seconds=request.seconds,
                               record=Path(record) if record else None, warn=warn, ahead_bars=request.ahead_bars)
        finally:
            with self._lock:
                self._jam = None
                self._job_id = None
        if is_cancelled():
            raise Cancelled("the jam was cancelled")
        take.stopped_by = self._stopped_by
        take.seed = settings.seed
        take.glide_log = list(jam.glide_log)
        return JobResult(paths=[take.path], seconds=take.seconds, sample_rate=rate, take=take)

    def _clock_for(self, sync: str, is_cancelled: Callable[[], bool]) -> BarClock | None:
        if sync == "link":
            if self.link is None:
                raise BadArgs("sync link needs the bridge started with --link (musicgen-bridge serve --link)")
            self.link.hold(is_cancelled)  # released when the jam ends (run)
            return self.link
        if sync == "midi":
            midi = self.midi
            if midi is None:
                raise BadArgs("sync midi needs the bridge started with --midi")
            deadline = time.monotonic() + MIDI_CLOCK_WAIT
            while not midi.ready:  # a MIDI Start starts the jam: the clock's pulses follow it
                if is_cancelled() or time.monotonic() > deadline:
                    raise BadArgs(f"sync midi: no MIDI clock came within {MIDI_CLOCK_WAIT:g} s: start the DAW's "
                                  "transport with MIDI clock sent to the bridge's port")
                time.sleep(0.01)
            return midi
        return None

    def _run_synced(self, jam: Jam, folder: Path, should_stop: Callable[[], bool], clock: BarClock,
                    request: Request, announce: Callable[..., None], warn: Callable[[str], None]) -> JamTake:
        record = request.extra.get("record")
        kwargs: dict[str, Any] = {"on_segment": announce, "for_seconds": request.seconds, "warn": warn,
                                  "record": Path(record) if record else None}
        if not request.play:
            return run_synced_jam(jam, folder, should_stop, clock, **kwargs)
        with self.output.for_jam(on_stop=self._stop_from_output) as player:
            return run_synced_jam(jam, folder, should_stop, clock, player=player, **kwargs)
