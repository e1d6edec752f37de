"""The one owner of the output device: a file's playback or a jam's take, never both at once.

Rules (the README's address table says them too):

- A jam holds the device from its start to its end. While it does, playing a file is refused with
  ``busy`` (stop the jam first), and ``stop`` stops the jam: the sound ends at once, the jam stops
  generating at its next step, and its starter gets ``done`` with the take made so far.
- Without a jam, ``play`` ends whatever file is playing and plays the new one; ``stop`` silences it.
- A jam that starts while a file plays takes the device over (the file's playback ends).
- No audio device is a normal state: a play request fails with ``no_audio_device`` and the reason.

Opening a device, listing devices and stopping a take can take seconds (a child process, a stuck
audio server), so the front ends' calls (:meth:`OutputDevice.play`, :meth:`OutputDevice.stop`) are
queued to this object's own thread and answered through a callback when done; the OSC loop never
waits for them. The worker's calls (a job's ``play 1``, the jam) run in the worker's thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from bridge import audio
from bridge.errors import BridgeError, Busy, NoAudioDevice

log = logging.getLogger(__name__)

PREROLL_HORIZON = 60.0  # seconds a slow machine's jam pre-rolls to play without a gap (at most)
_BUFFER_SLACK = 30.0  # seconds of device buffer beyond the longest pre-roll


def preroll_target(for_seconds: float | None) -> float:
    """Seconds a jam on a slow machine pre-rolls enough for to play without a gap: its length, at most
    :data:`PREROLL_HORIZON` (an open-ended jam, or ``--for 7200``, aims at the first minute)."""
    return PREROLL_HORIZON if for_seconds is None else min(for_seconds, PREROLL_HORIZON)


def player_buffer_seconds(for_seconds: float | None = None) -> float:
    """The device buffer a jam of ``for_seconds`` (None: open-ended) needs: room for its pre-roll."""
    return preroll_target(for_seconds) + _BUFFER_SLACK


PLAYER_BUFFER_SECONDS = player_buffer_seconds()


class PlayerLike(Protocol):
    """What the owner uses of :class:`bridge.audio.playback.Player` (tests pass a stand-in)."""

    def open(self, record: bool | str | Path = False, start_seconds: float | None = None) -> None: ...

    def play_array(self, audio: Any, sample_rate: int, record: bool | str | Path = False) -> None: ...

    def stop(self) -> None: ...

    @property
    def underruns(self) -> int: ...


def _default_player(device: str | None, buffer_seconds: float, popen: Callable[..., Any] | None = None) -> PlayerLike:
    from bridge.audio.playback import Player  # noqa: PLC0415  (PortAudio stays out of the daemon)

    if popen is None:
        return Player(device=device, buffer_seconds=buffer_seconds, start_seconds=0.5)
    return Player(device=device, buffer_seconds=buffer_seconds, start_seconds=0.5, popen=popen)


def _default_outputs() -> list[Any]:
    from bridge.audio.playback import list_devices  # noqa: PLC0415

    return list(list_devices())


Reply = Callable[[BridgeError | None], None]


class OutputDevice:
    """The output device and who holds it; see the module docstring for the rules."""

    def __init__(self, device: str | None = None, *, buffer_seconds: float = PLAYER_BUFFER_SECONDS,
                 make_player: Callable[[str | None, float], PlayerLike] | None = None,
                 list_outputs: Callable[[], list[Any]] | None = None,
                 popen: Callable[..., Any] | None = None) -> None:
        self.device = device
        self.buffer_seconds = buffer_seconds
        # popen: starts the playback child at the daemon's own priority (bridge/compute.py's Launcher)
        self._make_player = make_player or functools.partial(_default_player, popen=popen)
        self._list_outputs = list_outputs or _default_outputs
        self._lock = threading.Lock()
        self._player: PlayerLike | None = None
        self._jam_stop: Callable[[], None] | None = None  # set while a jam holds the device
        self._tasks: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- facts ------------------------------------------------------------------------------
    @property
    def jamming(self) -> bool:
        with self._lock:
            return self._jam_stop is not None

    @property
    def underruns(self) -> int:
        with self._lock:
            player = self._player
        return int(player.underruns) if player is not None else 0

    # -- the worker's side (blocking) ---------------------------------------------------------
    def player(self) -> PlayerLike:
        """The player, made on first use; NoAudioDevice says why there is none."""
        with self._lock:
            if self._player is not None:
                return self._player
        if not self._list_outputs():  # a subprocess: outside the lock
            raise NoAudioDevice("no audio output here (no sound card, no JACK or PulseAudio server): start an audio "
                                "server to play")
        with self._lock:
            if self._player is None:
                self._player = self._make_player(self.device, self.buffer_seconds)
            return self._player

    def check_available(self) -> None:
        """Raise NoAudioDevice now, before a job spends minutes generating what it cannot play."""
        self.player()

    def play_now(self, path: str | Path) -> Path:
        """Play an audio file (a result); returns once it has started. Busy while a jam holds the device.

        The file's header is checked first, then the device and the jam; only then is the file read.
        """
        audio.probe_clip(path)
        player = self.player()
        with self._lock:
            if self._jam_stop is not None:
                raise Busy("a jam is playing on the output device: stop it (/musicgen/jam/stop or /musicgen/stop) "
                           "before playing a file")
        clip = audio.read_clip(path)
        player.play_array(clip.data, clip.sample_rate)
        return clip.path

    def stop_now(self) -> None:
        """Silence the device at once; a jam holding it is told to stop (it ends with the take so far)."""
        with self._lock:
            jam_stop, player = self._jam_stop, self._player
        if jam_stop is not None:
            jam_stop()
        if player is not None:
            player.stop()

    @contextlib.contextmanager
    def for_jam(self, on_stop: Callable[[], None]) -> Iterator[PlayerLike]:
        """Hold the device for a jam; ``on_stop`` is called when someone stops the output meanwhile."""
        player = self.player()
        with self._lock:
            if self._jam_stop is not None:
                raise Busy("another jam holds the output device: stop it first")
            self._jam_stop = on_stop
        try:
            yield player
        finally:
            with self._lock:
                self._jam_stop = None

    # -- the front ends' side (never blocks) --------------------------------------------------
    def play(self, path: str, done: Callable[[Path | None, BridgeError | None], None]) -> None:
        """Queue playing ``path``; ``done(path, None)`` once it plays, ``done(None, error)`` if it cannot."""

        def task() -> None:
            try:
                played = self.play_now(path)
            except BridgeError as exc:
                done(None, exc)
            else:
                done(played, None)

        self._submit(task, lambda exc: done(None, exc))

    def stop(self, done: Reply) -> None:
        """Queue a stop (see :meth:`stop_now`); ``done(None)`` once the device is silent."""

        def task() -> None:
            try:
                self.stop_now()
            except BridgeError as exc:
                done(exc)
            else:
                done(None)

        self._submit(task, done)

    def _submit(self, task: Callable[[], None], refuse: Callable[[BridgeError], None]) -> None:
        with self._lock:
            if self._closed:
                refuse(Busy("the bridge is shutting down; send it again once it is back"))
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="musicgen-output", daemon=True)
                self._thread.start()
            self._tasks.put(task)

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            try:
                task()
            except Exception:
                # A reply callback that breaks must not end the thread that serves every later play.
                log.exception("an output task failed")

    def close(self, timeout: float = 5.0) -> None:
        """Stop playback and the output thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
            player = self._player
        if thread is not None:
            self._tasks.put(None)
            thread.join(timeout)
        if player is not None:
            try:
                player.stop()
            except BridgeError as exc:
                log.warning("stopping playback at shutdown: %s", exc.message)

