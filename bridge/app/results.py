"""What jobs produce, typed below the front ends: a finished job's files, a streamed chunk, a jam's take."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Chunk:
    """A piece of a result written while the job still runs (streaming), or one segment of a jam."""

    index: int
    path: Path
    start_seconds: float
    seconds: float
    beat: float = -1.0  # a synced jam: the set's beat its first sample is heard on (-1: sync free)


@dataclass
class JamTake:
    """What a jam left behind: the whole take, its segments and how fast they were made."""

    path: Path
    segments: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    underruns: int = 0
    realtime_factor: float = 0.0  # seconds of audio per second of generation
    record_path: Path | None = None
    segment_seconds: list[float] = field(default_factory=list)  # audio length of each segment
    generation_seconds: list[float] = field(default_factory=list)  # wall time each segment took
    first_audio_seconds: float | None = None  # from the call to the first segment being ready
    preroll_seconds: float = 0.0  # audio queued when playback started
    stopped_by: str = ""  # "" (asked to stop or ran its length), "output stop", "cancel"
    seed: int | None = None  # the seed the jam started from (drawn at random when not asked)
    segment_beats: list[float] = field(default_factory=list)  # synced: the set's beat each segment starts on
    segment_bpm: list[float] = field(default_factory=list)  # synced: the tempo each segment was made at
    placements: list[Any] = field(default_factory=list)  # synced: bridge.audio.schedule.Placement per segment
    glide_log: list[tuple[int, float]] = field(default_factory=list)  # (frame, distance from a glide's end)

    def slowest_ratio(self) -> float:
        """The largest generation time over segment length seen (above 1: slower than real time)."""
        return max((g / a for g, a in zip(self.generation_seconds, self.segment_seconds, strict=True) if a > 0),
                   default=0.0)


@dataclass
class JobResult:
    """What a finished job produced: one file per variation, with its sidecar (a jam: its take)."""

    paths: list[Path]
    seconds: float
    sample_rate: int
    sidecars: list[Path] = field(default_factory=list)
    take: JamTake | None = None
