"""Live playback: the Player, which plays takes on a sounddevice OutputStream in a child process fed through a ring buffer.

Why a child process: PortAudio cannot be trusted with the daemon's life. Measured with JACK's dummy
backend (jackd2 1.9.21, PortAudio 19.6): when the JACK server dies mid-stream, ``Stream.abort()`` and
``Stream.close()`` never return, and at interpreter exit ``Pa_Terminate`` fails an assertion and aborts
the process. PortAudio also lists devices once, when it is loaded, so a daemon that loaded it before
JACK started would never see JACK (``playback_devices`` lists them in a fresh child). So each take runs
``python -m bridge.audio.playback_child`` (a plain subprocess: nothing of the caller's ``__main__`` is
re-imported), which loads sounddevice, opens the device, and plays from a ring buffer its callback only
copies from. The daemon never loads PortAudio; the take's reader thread (``playback_take``), waiting on the
child's pipe with a deadline, kills a child whose callback (or whose heartbeat) stopped, so a dead backend
costs at most ``stall_timeout`` seconds and a ``no_audio_device`` error, never a hang. The callback also
never waits for the daemon's GIL while the daemon generates.

The two processes speak (``playback_take``) in framed messages (one type byte, a length, a payload) over
the child's stdin and stdout. The parent sends audio only into room the child has reported (credits), so
the child's reader thread never blocks and the bound on buffered audio is the ring's capacity.

Shapes follow the rest of the package: audio is (channels, samples) float32.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from bridge.audio.playback_child import C_FRAMES_OUT, C_STARTED, C_UNDERRUNS, OutputInfo
from bridge.audio.playback_devices import list_devices, parse_device
from bridge.audio.playback_take import PlaybackStats, Recording, Take
from bridge.audio.schedule import Placement
from bridge.errors import BadArgs, BadAudio, NoAudioDevice

__all__ = ["OutputInfo", "PlaybackStats", "Player", "Recording", "list_devices", "parse_device"]

log = logging.getLogger(__name__)

Record = bool | str | os.PathLike[str] | Recording | None  # what ``record`` may be: see Recording.of


class Player:
    """Plays audio on one output device, one take at a time, gaplessly, without ever hanging its caller.

    Feed it yourself (``open``, ``write`` from your producer thread, ``finish``, ``wait``) or hand it a
    whole result (``play_array``, ``play_file``: a producer thread does the feeding). Playback starts once
    ``start_seconds`` are queued (or the buffer is full, or at ``finish``), so it does not begin with an
    underrun. Opening fails with NoAudioDevice (code ``no_audio_device``) and the reason when there is
    nothing to play on; so does ``write`` or ``wait`` when the device dies during a take.
    """

    def __init__(self, device: str | int | None = None, sample_rate: int | None = None, channels: int = 2,
                 blocksize: int = 0, latency: str | float = "high", buffer_seconds: float = 2.0,
                 start_seconds: float = 0.2, stall_timeout: float = 2.0, open_timeout: float = 15.0,
                 popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen) -> None:
        if channels < 1:
            raise BadArgs(f"channels must be at least 1, got {channels}")
        if buffer_seconds <= 0 or start_seconds < 0 or stall_timeout <= 0:
            raise BadArgs("buffer_seconds and stall_timeout must be positive and start_seconds not negative")
        self._spec: dict[str, Any] = {"device": parse_device(device), "sample_rate": sample_rate, "channels": channels,
                      "blocksize": blocksize, "latency": latency, "buffer_seconds": buffer_seconds,
                      "start_seconds": start_seconds}
        self.stall_timeout = stall_timeout
        self.open_timeout = open_timeout
        self._popen = popen
        self._take: Take | None = None
        self._underruns_before = 0
        self._lock = threading.Lock()  # one open/stop at a time

    # Feeding it yourself.
    def open(self, record: Record = False, start_seconds: float | None = None, scheduled: bool = False) -> None:
        """Open the device for a new take (stopping the current one); ``record``: keep (True) or write (a path) what plays.

        ``record`` is read once into a :class:`Recording` (False or None: nothing is kept).

        ``start_seconds`` overrides the player's for this take: how much must be queued before playback
        starts by itself (a full buffer, ``start`` and ``finish`` start it too). ``scheduled``: the device
        plays from now on (silence until the first marked frame) and :meth:`mark` puts frames at host times.
        """
        spec = self._spec if start_seconds is None else dict(self._spec, start_seconds=max(0.0, start_seconds))
        spec = dict(spec, scheduled=scheduled)
        with self._lock:
            self._end_take()
            self._take = Take(spec, Recording.of(record), self.stall_timeout, self.open_timeout, self._popen)
            log.info("audio device %s open at %d Hz in %.2f s", self._take.info["name"], self._take.sample_rate,
                     self._take.open_seconds)

    def write(self, audio: np.ndarray, timeout: float | None = None) -> int:
        """Queue (channels, samples) audio at ``sample_rate``; blocks while the buffer is full.

        Returns the samples queued: all of them, or fewer after ``timeout`` or ``stop``. Raises
        NoAudioDevice when the device failed during the take.
        """
        take = self._current()
        frames = self._as_frames(audio, take.channels)
        done = take.feed(frames, timeout)
        if done < frames.shape[0] and take.error is not None:
            raise take.error
        return done

    def start(self) -> None:
        """Start playing now, whatever is queued (playback also starts by itself once primed)."""
        self._current().start()

    def finish(self) -> None:
        """No more audio for this take: it ends once what is queued has played."""
        self._current().finish()

    # Scheduled takes (open(scheduled=True)): bridge.audio.schedule.
    def mark(self, frame: int, host_ns: int) -> None:
        """Frame ``frame`` of this take (counting every frame written) is to be heard at ``host_ns``
        (``CLOCK_MONOTONIC_RAW`` nanoseconds, Ableton Link's clock)."""
        self._current().mark(frame, host_ns)

    def flush(self) -> None:
        """Drop what is queued, unplayed (the set stopped); later marks place what is written after."""
        self._current().flush()

    @property
    def frames_written(self) -> int:
        """Frames written to this take so far: the number the next written frame will have."""
        return self._take.sent if self._take is not None else 0

    @property
    def placements(self) -> list[Placement]:
        """Where each marked frame came out in the device's sample clock, as the child reported it."""
        return list(self._take.placements) if self._take is not None else []

    @property
    def callback_times(self) -> np.ndarray:
        """Scheduled takes: every callback's (first device frame, host ns it is heard at), an (n, 2) array."""
        parts = self._take.callback_times if self._take is not None else []
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)

    @property
    def clock_line(self) -> tuple[float, float, float, float] | None:
        """The child's fit of host time on the device's frames: (frame, host ns, ns per frame, RMS residual ns)."""
        return self._take.clock_line if self._take is not None else None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the take is over; True when it is. Raises NoAudioDevice if the device failed."""
        take = self._take
        if take is None:
            return True
        if not take.finished.wait(timeout):
            return False
        if take.error is not None:
            raise take.error
        return True

    def stop(self) -> None:
        """Stop at once (what is queued is dropped); returns within a few seconds even if the backend is dead."""
        with self._lock:
            if self._take is not None:
                self._take.stop(timeout=max(1.0, self.stall_timeout))

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Player:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Handing it a whole result.
    def play_array(self, audio: np.ndarray, sample_rate: int, record: Record = False) -> None:
        """Play (channels, samples) or mono audio at any rate (resampled to the device's); returns at once."""
        data = np.asarray(audio, dtype=np.float32)
        if data.ndim == 1:
            data = data[np.newaxis, :]
        if data.ndim != 2 or data.shape[1] == 0:
            raise BadAudio(f"audio to play must be (channels, samples) with samples, got shape {data.shape}")
        if not np.isfinite(data).all():
            raise BadAudio("audio to play holds NaN or infinite samples: regenerate or re-export it")
        if sample_rate <= 0:
            raise BadArgs(f"sample rate must be positive, got {sample_rate}")
        self.open(record=record)
        take = self._current()
        from bridge.audio import match_channels, resample  # noqa: PLC0415

        data = resample(match_channels(data, take.channels), int(sample_rate), take.sample_rate)
        producer = threading.Thread(target=self._feed, args=(take, data.T), name="musicgen-playback-producer",
                                    daemon=True)
        producer.start()

    def play_file(self, path: str | os.PathLike[str], record: Record = False) -> None:
        """Play an audio file (NotFound / BadAudio when it is missing or not audio); returns at once."""
        from bridge.audio import read_clip  # noqa: PLC0415

        clip = read_clip(path)
        self.play_array(clip.data, clip.sample_rate, record=record)

    @staticmethod
    def _feed(take: Take, frames: np.ndarray) -> None:
        if take.feed(frames, None) == frames.shape[0]:
            take.finish()

    # What is going on.
    @property
    def sample_rate(self) -> int | None:
        """The device's rate during a take (what ``write`` expects), else the asked one."""
        if self._take is not None:
            return self._take.sample_rate
        asked = self._spec["sample_rate"]
        return int(asked) if asked is not None else None

    @property
    def channels(self) -> int:
        return int(self._spec["channels"])

    @property
    def device_name(self) -> str | None:
        return str(self._take.info["name"]) if self._take is not None else None

    @property
    def latency(self) -> float | None:
        """The output latency the device reported, in seconds."""
        return float(self._take.info["latency"]) if self._take is not None else None

    @property
    def playing(self) -> bool:
        take = self._take
        return take is not None and bool(take.counters[C_STARTED]) and not take.finished.is_set()

    @property
    def queued_frames(self) -> int:
        """Frames written and not yet handed to the device (the run-ahead), as of the child's last report."""
        take = self._take
        return take.queued if take is not None and not take.finished.is_set() else 0

    @property
    def delivered_frames(self) -> int:
        """Frames of this take handed to the device so far."""
        return self._take.counters[C_FRAMES_OUT] if self._take is not None else 0

    @property
    def underruns(self) -> int:
        """Times the callback found the buffer short while more audio was due, over this player's life."""
        return self._underruns_before + (self._take.counters[C_UNDERRUNS] if self._take is not None else 0)

    @property
    def error(self) -> NoAudioDevice | None:
        return self._take.error if self._take is not None else None

    def stats(self) -> PlaybackStats | None:
        return self._take.stats() if self._take is not None else None

    def recording(self) -> np.ndarray:
        """The take as delivered to the device, (channels, samples), for ``open(record=True)``; call after ``wait``.

        It is what the callback handed over, silence from underruns included, up to the end of the input
        (the padding of the last device block after the end is not part of it).
        """
        take = self._current()
        if take.record is None or take.record.file is not None:
            raise BadArgs("this take was not recorded in memory: open it with record=True")
        return take.recording()

    # Helpers.
    def _current(self) -> Take:
        if self._take is None:
            raise BadArgs("no take is open: call open() or play_array() first")
        return self._take

    def _end_take(self) -> None:
        if self._take is not None:
            self._take.stop(timeout=max(1.0, self.stall_timeout))
            self._underruns_before += self._take.counters[C_UNDERRUNS]
            self._take = None

    @staticmethod
    def _as_frames(audio: np.ndarray, channels: int) -> np.ndarray:
        data = np.asarray(audio, dtype=np.float32)
        if data.ndim == 1:
            data = data[np.newaxis, :]
        if data.ndim != 2 or data.shape[0] != channels:
            raise BadAudio(f"audio for this player must be ({channels}, samples), got shape {data.shape}")
        return data.T

