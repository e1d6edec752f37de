"""One request made from a prompt clip, where its result goes, and the bridge's address for each kind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .names import CONTINUE, FILL, GENERATE, JAM, KEY, LOOP, MELODY, PromptName

if TYPE_CHECKING:
    from Live.Clip import Clip
    from Live.ClipSlot import ClipSlot
    from Live.Track import Track

    from . import loopfill, placing
    from .osc import Value
    from .timeline import ArrangementJam

ADDRESSES = {GENERATE: "/musicgen/generate", CONTINUE: "/musicgen/continue", MELODY: "/musicgen/melody",
             JAM: "/musicgen/jam/start", LOOP: "/musicgen/loop", FILL: "/musicgen/infill", KEY: "/musicgen/generate"}
WHAT = {GENERATE: "new audio", CONTINUE: "a continuation", MELODY: "audio following the melody", JAM: "a jam",
        LOOP: "a seamless loop", FILL: "a fill", KEY: "new audio in the set's key"}


class Job:
    """One request made from a prompt clip, and where its result goes."""

    def __init__(self, job_id: str, request: PromptName, clip: Clip, track: Track, slot: ClipSlot | None,
                 bar: placing.Meter, bars: int, position: float, sent_at: float) -> None:
        self.id = job_id
        self.request = request
        self.clip = clip
        self.track = track
        self.slot = slot  # None: an arrangement clip
        self.bar = bar
        self.bars = bars
        self.position = position  # arrangement: where the result starts, in beats
        self.sent_at = sent_at
        self.answered = False
        self.message: tuple[str, list[Value]] = ("", [])  # the request, sent again if a restarted bridge lost it
        self.shown: str | None = None
        self.segments = 0
        self.gap: loopfill.Gap | None = None  # mg fill: where the fill goes
        self.key: str | None = None  # "A minor": the set's key, when the prompt asks for it
        self.timeline: ArrangementJam | None = None  # a jam written into the Arrangement

    @property
    def label(self) -> str:
        return "'%s'" % (self.request.prompt or self.request.head)
