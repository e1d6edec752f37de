"""What the script does on each of Live's ticks: read clip names, ask the bridge, place the results.

Everything runs on Live's thread. Listener callbacks only note what changed (Live forbids changing
the set from a notification); the tick does the work, and never waits: the socket is non-blocking.
"""

from __future__ import annotations

import os
import random
import time
from typing import TYPE_CHECKING, Any, Callable

from . import loopfill, placing
from .job import ADDRESSES, WHAT, Job
from .key import NO_SCALE, song_key, with_key
from .link import BridgeLink
from .names import (
    CONTINUE,
    DONE,
    FILL,
    JAM,
    JAMMING,
    KEY,
    MELODY,
    QUEUED,
    STOPPING,
    PromptName,
    parse_name,
    percent,
)
from .osc import Value, first_float
from .settings import Settings
from .timeline import NEEDS as NEEDS_ARRANGEMENT
from .timeline import ArrangementJam

if TYPE_CHECKING:
    from Live.Clip import Clip
    from Live.ClipSlot import ClipSlot
    from Live.Song import Song
    from Live.Track import Track

SERVE = "start it with `musicgen-bridge serve`"


class Controller:
    """The state of one MusicGenBridge control surface (Live makes one per set)."""

    def __init__(self, song: Song, settings: Settings, log: Callable[[str], Any], show: Callable[[str], Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.song = song
        self.settings = settings
        self._log = log
        self._show = show
        self._clock = clock
        self.jobs: list[Job] = []
        self._listeners: list[tuple[Any, str, Callable[[], None]]] = []
        self._name_events: list[tuple[Clip, Track, ClipSlot | None]] = []
        self._play_events: list[tuple[Clip, Track, ClipSlot]] = []
        self._written: list[tuple[Clip, str]] = []
        self._rescan_needed = True
        self._transport_changed = False
        self._connected: bool | None = None
        self._last_heard = self._last_ping = -1e9  # long ago, whatever the clock's origin
        self._pinged = False
        self._bridge_in_link = False  # the bridge runs with --link: a jam asks for `sync link` if Live's Link is on
        self._ids = f"live-{random.randrange(1 << 24):06x}"
        self._count = 0
        self.link: BridgeLink | None = None
        try:
            self.link = BridgeLink(settings.host, settings.port, settings.token)
        except OSError as exc:
            self.say(f"cannot open a UDP socket ({exc}): check the host setting, then reload the control surface")

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def say(self, message: str) -> None:
        """A message on Live's status bar, logged too."""
        self._show("MusicGen: " + message)
        self._log("MusicGenBridge: " + message)

    # -- the tick ---------------------------------------------------------------------------------

    def tick(self) -> None:
        now = self._clock()
        self._take_events()
        if self._rescan_needed:
            self._rescan()
            self._check_jam_clip()
        if self.link is None:
            return
        self._keep_registered(now)
        for address, args in self.link.receive():
            self._last_heard = now
            self._on_reply(address, args)
        for job in [j for j in self.jobs if not j.answered and now - j.sent_at > self.settings.answer_timeout]:
            waited = self.settings.answer_timeout
            self._fail(job, "no_bridge", f"the bridge did not answer at {self.where} within {waited:g} s: {SERVE} (one "
                       "started with --token also needs the token setting), then rename the clip to try again")

    def close(self) -> None:
        """Live is closing the set or the control surface: stop what runs and let go of everything."""
        self._unlisten_all()
        if self.link is None:
            return
        for job in self.jobs:
            if job.request.kind == JAM:
                self.link.send("/musicgen/jam/stop", [])
            else:
                self.link.send("/musicgen/cancel", [job.id])
        self.jobs = []
        self.link.close()
        self.link = None

    # -- watching the set -------------------------------------------------------------------------

    def _listen(self, subject: Any, prop: str, callback: Callable[[], None]) -> None:
        getattr(subject, f"add_{prop}_listener")(callback)
        self._listeners.append((subject, prop, callback))

    def _unlisten_all(self) -> None:
        for subject, prop, callback in self._listeners:
            try:
                getattr(subject, f"remove_{prop}_listener")(callback)
            except RuntimeError:  # the object is gone from the set already
                continue
        self._listeners = []

    def _structure_changed(self) -> None:
        self._rescan_needed = True

    def _on_name_change(self, clip: Clip, track: Track, slot: ClipSlot | None) -> Callable[[], None]:
        return lambda: self._name_events.append((clip, track, slot))

    def _on_play_change(self, clip: Clip, track: Track, slot: ClipSlot) -> Callable[[], None]:
        return lambda: self._play_events.append((clip, track, slot))

    def _rescan(self) -> None:
        """Listen to every clip's name (and session clips' playing state); ask for new prompt names."""
        self._rescan_needed = False
        self._unlisten_all()
        self._listen(self.song, "tracks", self._structure_changed)
        self._listen(self.song, "scenes", self._structure_changed)
        self._listen(self.song, "is_playing", self._on_transport_change)
        found = []
        for track in self.song.tracks:
            for slot in track.clip_slots:
                self._listen(slot, "has_clip", self._structure_changed)
                if slot.has_clip:
                    clip = slot.clip
                    self._listen(clip, "name", self._on_name_change(clip, track, slot))
                    self._listen(clip, "playing_status", self._on_play_change(clip, track, slot))
                    found.append((clip, track, slot))
            if hasattr(track, "arrangement_clips"):  # Live 11 and later
                self._listen(track, "arrangement_clips", self._structure_changed)
                for clip in track.arrangement_clips:
                    self._listen(clip, "name", self._on_name_change(clip, track, None))
                    found.append((clip, track, None))
        for clip, track, slot in found:  # names typed while the script was not running, or pasted clips
            request = parse_name(clip.name)
            if request is not None and request.state is None and request.kind != JAM:
                self._asked(request, clip, track, slot)
        self._transport_changed = True  # an Arrangement jam clip found while the song plays starts now

    def _take_events(self) -> None:
        names, plays = self._name_events, self._play_events
        self._name_events, self._play_events = [], []
        recent, self._written = self._written, []
        for clip, track, slot in names:
            try:
                name = clip.name
                if any(c == clip and n == name for c, n in recent + self._written):
                    continue  # the script's own rename
                self._renamed(clip, track, slot, name)
            except RuntimeError:  # the clip was deleted since
                continue
        for clip, track, slot in plays:
            try:
                self._play_changed(clip, track, slot)
            except RuntimeError:
                continue
        if self._transport_changed:
            self._transport_changed = False
            self._transport()

    def _renamed(self, clip: Clip, track: Track, slot: ClipSlot | None, name: str) -> None:
        request = parse_name(name)
        jam = self._jam()
        if jam is not None and jam.clip == clip:
            if request is not None and request.kind == JAM and request.prompt != jam.request.prompt:
                prompt, negative = loopfill.split_negative(request.prompt)
                self._send("/musicgen/jam/set", ["prompt", with_key(prompt, jam.key), "negative", negative])
                state, jam.request, jam.shown = jam.shown or JAMMING, request, None
                self._set_state(jam, state)
                self.say(f"the jam takes the prompt '{request.prompt}' from its next segment")
            return
        for job in [j for j in self.jobs if j.clip == clip]:  # a renamed clip asks again: drop the old request
            self._send("/musicgen/cancel", [job.id])
            self.jobs.remove(job)
        if request is not None and (request.kind != JAM or (slot is None and self.song.is_playing)):
            self._asked(request, clip, track, slot)

    def _jam(self) -> Job | None:
        return next((j for j in self.jobs if j.request.kind == JAM), None)

    def _play_changed(self, clip: Clip, track: Track, slot: ClipSlot) -> None:
        request = parse_name(clip.name)
        jam = self._jam()
        if jam is not None and jam.clip == clip:
            if not clip.is_playing and jam.shown == JAMMING:
                self._send("/musicgen/jam/stop", [])
                self._set_state(jam, STOPPING)
                self.say("stopping the jam at the end of its segment; the take lands beside the clip")
            return
        if request is None or request.kind != JAM or not clip.is_playing:
            return
        if jam is not None:
            self.say(f"a jam is already running from {jam.label}: stop that clip first")
            return
        self._asked(request, clip, track, slot)

    # -- asking the bridge ------------------------------------------------------------------------

    def _send(self, address: str, args: list[Value]) -> bool:
        return self.link is not None and self.link.send(address, args)

    def _asked(self, request: PromptName, clip: Clip, track: Track, slot: ClipSlot | None) -> None:
        """A prompt clip asks for something: send the request and show that it is queued."""
        kind = request.kind
        song = self.song
        bar = placing.meter(song.tempo, song.signature_numerator, song.signature_denominator)
        bars = placing.bars_in(placing.clip_beats(clip, song.tempo), bar)
        position = 0.0
        if slot is None:
            position = clip.end_time if kind == CONTINUE else clip.start_time
        self._count += 1
        job = Job(f"{self._ids}-{self._count}", request, clip, track, slot, bar, bars, position,
                  self._clock())
        self.jobs.append(job)
        if kind == KEY or self.settings.key:
            job.key = song_key(song)
            if job.key is None:
                self.say(NO_SCALE)
        if kind == JAM and (slot is None or song.record_mode):
            problem = self._into_arrangement(job)
            if problem:
                return self._fail(job, "not_placed", problem)
        if kind == FILL and slot is not None:
            return self._fail(job, "bad_args", "mg fill: works in the Arrangement: put an empty MIDI clip between "
                                               "two audio clips there")
        prompt, negative = loopfill.split_negative(request.prompt)
        source: list[Value] = []
        if kind in (CONTINUE, MELODY):
            path = clip.file_path if clip.is_audio_clip else ""
            if not path:
                mark = request.head.split(":")[0] + ":"
                return self._fail(job, "bad_args", f"{mark} needs an audio clip: name an audio clip `{request.head}`")
            source = [path]
        tempo: list[Value] = ["bpm", bar.bpm, "bars", bars, "beats_per_bar", bar.beats_per_bar]
        if kind == JAM:
            linked = self._bridge_in_link and song.is_ableton_link_enabled  # both in Link: the session's bar lines
            if linked:
                tempo = ["bars", bars, "beats_per_bar", bar.beats_per_bar, "sync", "link"]
            play = self.settings.jam_play and job.timeline is None  # the Arrangement plays its own segments
            # files only, at its own tempo: a segment and a bar ahead of real time at most (a new name is heard soon)
            pace: list[Value] = [] if play or linked else ["ahead_bars", bars + 1]
            args = [job.id, with_key(prompt, job.key), *tempo, "play", 1 if play else 0, *pace]
        elif kind == FILL:
            try:
                job.gap = loopfill.find_gap(song, track, clip)
            except placing.NotPlaced as exc:
                return self._fail(job, "bad_args", str(exc))
            args = loopfill.fill_request(job.id, prompt, negative, job.gap, song.tempo)  # type: ignore[assignment]
            source = args[1:3]
            negative = ""  # already among the fill's arguments
        else:
            args = [job.id, *source, prompt, 0.0, *tempo, *(["key", job.key] if job.key else [])]
        args += loopfill.negative_options(negative)  # type: ignore[arg-type]
        if self._connected is not True:
            self._send("/musicgen/notify", [self.link.port] if self.link else [])
        job.message = (ADDRESSES[kind], args)
        if not self._send(ADDRESSES[kind], args):
            reason = self.link.last_error if self.link is not None else "no socket"
            return self._fail(job, "no_bridge", f"{reason}: check the host and port settings")
        self._set_state(job, JAMMING if kind == JAM else QUEUED)
        origin = f" from {source[0]!s}" if source else ""
        self._log(f"MusicGenBridge: request {job.id} {ADDRESSES[kind]} {job.label}: {bars} bars at {bar.bpm:g} bpm, "
                  f"{bar.beats_per_bar} beats a bar{origin}")
        self._show(f"MusicGen: asked for {bars} bars of {WHAT[kind]} for {job.label}")
        return None

    def _keep_registered(self, now: float) -> None:
        """Ping the bridge now and then; when it has been silent, register the reply port again, so a
        restarted bridge (which forgot the registration) is found without the user doing anything."""
        if now - self._last_ping < self.settings.ping_seconds or self.link is None:
            return
        if now - self._last_heard > self.settings.ping_seconds * 1.5:
            if self._connected is not False and self._pinged:  # silent since the last ping, not just started
                self.say(f"no answer from the bridge at {self.where}: {SERVE} (the script keeps trying)"
                         f"{self._jam_kept()}")
                self._connected = False
            self._send("/musicgen/notify", [self.link.port])
        self._send("/musicgen/ping", [])
        self._last_ping, self._pinged = now, True

    # -- what the bridge says ---------------------------------------------------------------------

    def _job(self, args: list[Value], index: int) -> Job | None:
        job_id = args[index] if index < len(args) else None
        return next((j for j in self.jobs if j.id == job_id), None)

    def _on_reply(self, address: str, args: list[Value]) -> None:
        if address in ("/musicgen/pong", "/musicgen/notify") and self._connected is not True:
            if address == "/musicgen/notify" and (not args or args[0] != (self.link.port if self.link else None)):
                return
            self._connected = True
            self.say(f"connected to the bridge at {self.where}")
            self._send("/musicgen/link", [])
            for pending in self.jobs:  # after a restart the bridge may have forgotten them, or never seen them
                self._send("/musicgen/job", [pending.id])
            return
        if address in ("/musicgen/done", "/musicgen/fail"):
            job = self._job(args, 1)
            if job is None:
                return
            if address == "/musicgen/done":
                self._done(job, str(args[2]) if len(args) > 2 else "", first_float(args, 3))
            elif args[0] == "/musicgen/job" and not job.answered:  # sent while the bridge was away
                job.sent_at = self._clock()
                self._send(*job.message)
            elif args[0] == "/musicgen/job":
                self._fail(job, "lost", "the bridge restarted and forgot this request: rename the clip to try again")
            else:
                self._fail(job, str(args[2]) if len(args) > 2 else "internal", str(args[3]) if len(args) > 3 else "")
            return
        if address == "/musicgen/link":
            self._bridge_in_link = bool(args) and args[0] == 1
            return
        job = self._job(args, 0)
        if job is None:
            return
        job.answered = True
        if address == "/musicgen/progress":
            if job.request.kind != JAM:
                self._set_state(job, percent(first_float(args, 1)))
            self._show(f"MusicGen: {job.label} {int(first_float(args, 1) * 100)}%")
        elif address == "/musicgen/queued" and first_float(args, 1) > 0:
            self._show(f"MusicGen: {job.label} waits behind {int(first_float(args, 1))} other requests")
        elif address == "/musicgen/jam/segment":  # <id> <index> <path> [<beat>]
            job.segments += 1
            if job.timeline is not None:
                self._place_segment(job, args)
            else:
                self._show(f"MusicGen: jam segment {job.segments} of {job.label} is ready")
        elif address == "/musicgen/warning" and len(args) > 1:
            self.say(f"{job.label}: {args[1]!s}")
        elif address == "/musicgen/job" and len(args) > 3:
            state, paths = args[1], args[3:]
            if state == "done" and paths:
                self._done(job, str(paths[0]), 0.0)
            elif state in ("failed", "cancelled") and len(paths) > 1:
                self._fail(job, str(paths[0]), str(paths[1]))

    def _set_state(self, job: Job, state: str) -> None:
        if job.shown == state:
            return
        job.shown = state
        name = job.request.with_state(state)
        self._written.append((job.clip, name))
        try:
            job.clip.name = name
        except RuntimeError:  # the prompt clip was deleted; its result is still placed
            return

    def _fail(self, job: Job, code: str, message: str) -> None:
        if job in self.jobs:
            self.jobs.remove(job)
        self._set_state(job, code)
        message += self._jam_kept(job)
        self._show(f"MusicGen: {job.label}: {code} {message}")
        self._log(f"MusicGenBridge: failed {job.id} {job.label}: {code} {message}")

    def _done(self, job: Job, path: str, seconds: float) -> None:
        """Put the result into the set, pinned to its bars, and mark the prompt clip done."""
        if job.timeline is not None:  # the segments are in the Arrangement already: they are the take
            return self._jam_ended(job, f"the jam stopped; its {job.timeline.placed} segments stay in the Arrangement")
        if job.request.kind == JAM:  # the take is whole segments of the jam's bars
            bar_seconds = job.bar.beats_per_bar * 60.0 / job.bar.bpm
            job.bars = max(1, int(seconds / bar_seconds + 0.5)) if seconds > 0 else job.bars
        beats = job.gap.beats if job.gap is not None else job.bars * job.bar.quarters_per_bar
        try:
            if not os.path.isabs(path):
                raise placing.NotPlaced(f"the bridge sent {path!r}, not an absolute path")
            clip, where = self._place(job, path, beats)
        except placing.NotPlaced as exc:
            return self._fail(job, "not_placed", str(exc))
        problem = None
        if clip is None:
            problem = "Live did not hand back the clip, so it keeps Live's own warping"
        else:
            problem = placing.pin_to_bars(clip, beats, seconds)
            clip.name = job.request.prompt or "continued"
        if job in self.jobs:
            self.jobs.remove(job)
        self._set_state(job, DONE)
        if job.gap is not None:  # the fill replaces its mg fill: clip
            kept = loopfill.remove_prompt_clip(job.track, job.clip)
            problem = kept if problem is None else problem
        self._log(f"MusicGenBridge: done {job.id}: {path} -> {where}")
        note = "; " + problem if problem else ""
        self.say(f"{job.label} is on {where} ({job.bars} bars){note}")
        return None

    def _place(self, job: Job, path: str, beats: float) -> tuple[Clip | None, str]:
        song, name = self.song, job.request.prompt or "MusicGen"
        if job.gap is not None:
            return loopfill.place_fill(job.gap, path)
        continuing = job.request.kind == CONTINUE
        if job.slot is not None:
            slot, where = placing.session_target(song, job.track, job.slot, continuing, name)
            return placing.put_in_slot(slot, path), where
        track = placing.arrangement_target(song, job.track, job.position, beats, continuing, name)
        bar = int(job.position / job.bar.quarters_per_bar + placing.EPSILON) + 1
        return placing.put_in_arrangement(track, path, job.position), f"track '{track.name}' at bar {bar}"

    # -- the jam in the Arrangement, and the song's key -------------------------------------------

    def _on_transport_change(self) -> None:
        self._transport_changed = True

    def _transport(self) -> None:
        """The transport started (an `mg jam:` Arrangement clip starts its jam) or stopped (the
        Arrangement jam stops; its segments stay)."""
        jam = self._jam()
        if not self.song.is_playing:
            if jam is not None and jam.timeline is not None and jam.shown == JAMMING:
                self._send("/musicgen/jam/stop", [])
                self._set_state(jam, STOPPING)
                self.say("the transport stopped, so the jam stops; its segments stay in the Arrangement")
            return
        if jam is not None:
            return
        for track in self.song.tracks:
            for clip in getattr(track, "arrangement_clips", []):
                request = parse_name(clip.name)
                if request is not None and request.kind == JAM and request.state is None:
                    self._asked(request, clip, track, None)
                    return

    def _into_arrangement(self, job: Job) -> str | None:
        """Make ``job`` (a jam) write its segments into the Arrangement; what is missing, or None."""
        if not hasattr(job.track, "create_audio_clip"):
            return NEEDS_ARRANGEMENT + ": launch an `mg jam:` clip in Session view to hear it on the bridge's output"
        job.timeline = ArrangementJam(self.song, job.track, job.bar, job.bars, self.settings.jam_margin, self.say)
        return None

    def _place_segment(self, job: Job, args: list[Value]) -> None:
        timeline = job.timeline
        index = args[1] if len(args) > 1 and isinstance(args[1], int) else job.segments - 1
        path = str(args[2]) if len(args) > 2 else ""
        if timeline is None or not os.path.isabs(path):
            return
        try:
            where = timeline.place(index, path, job.request.prompt)
        except placing.NotPlaced as exc:
            self.say(f"jam segment {index + 1} of {job.label} was not placed: {exc}")
            return
        self._show(f"MusicGen: jam segment {index + 1} of {job.label} is on {where}")

    def _check_jam_clip(self) -> None:
        """A jam whose clip was deleted stops; what it placed stays."""
        jam = self._jam()
        if jam is None or jam.shown != JAMMING:
            return
        try:
            present = jam.clip.name is not None and (
                any(c == jam.clip for c in jam.track.arrangement_clips) if jam.slot is None
                else jam.slot.has_clip and jam.slot.clip == jam.clip)
        except RuntimeError:  # the track went with it
            present = False
        if not present:
            self._send("/musicgen/jam/stop", [])
            jam.shown = STOPPING
            self.say(f"the jam's clip {jam.label} was deleted, so the jam stops")

    def _jam_ended(self, job: Job, message: str) -> None:
        if job in self.jobs:
            self.jobs.remove(job)
        self._set_state(job, DONE)
        self.say(f"{job.label}: {message}")

    def _jam_kept(self, job: Job | None = None) -> str:
        """What a jam that failed, or whose bridge is gone, leaves: its segments in the Arrangement stay."""
        jam = job or self._jam()
        if jam is None or jam.timeline is None:
            return ""
        return f"; the jam's {jam.timeline.placed} segments stay in the Arrangement"
