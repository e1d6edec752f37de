"""The composition root: builds the application's objects once, from a Config, and hands them out.

``serve``, the one-shot commands and ``jam`` all start here: one engine, one :class:`Bridge` with its
services, one output device, one jam controller, one :class:`JobQueue` that OSC, MIDI and the CLI
submit to, and its :class:`JobEvents`, where each front end subscribes to hear its own jobs. Nothing
else makes these, so there is exactly one of each per process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.app.bridge import Bridge
from bridge.app.jam import JamController
from bridge.app.job_events import JobEvents
from bridge.app.jobs import Job, JobQueue, Runner
from bridge.app.journal import Journal, Recovery, default_state_folder
from bridge.app.link import LinkSession
from bridge.app.midi_clock import MidiClock
from bridge.app.output import OutputDevice
from bridge.app.presets import PresetLibrary
from bridge.app.storage import remove_stale_temporaries
from bridge.compute import Launcher, apply_threads, plan_compute, yield_this_thread
from bridge.config import Config
from bridge.engine import Engine
from bridge.engine.models import load_model

log = logging.getLogger(__name__)

SHIPPED_PRESETS = Path(__file__).resolve().parents[2] / "presets"


def load_presets(folder: Path | None) -> PresetLibrary | None:
    """The preset banks in ``folder``, or in the project's ``presets/`` when none is given and it exists."""
    if folder is not None:
        return PresetLibrary.load(folder)
    return PresetLibrary.load(SHIPPED_PRESETS) if SHIPPED_PRESETS.is_dir() else None


@dataclass
class App:
    """Everything a front end may use: the facade (requests, facts), the queue, the output device, the jam."""

    config: Config
    bridge: Any  # the facade: bridge.app.bridge.Bridge (tests pass a stand-in with the same methods)
    jobs: JobQueue
    output: OutputDevice
    jam: JamController
    presets: PresetLibrary | None = None
    midi_clock: MidiClock | None = None
    """The MIDI clock a ``sync midi`` jam follows."""
    link: LinkSession | None = None
    """The Ableton Link session (``--link``)."""
    journal: Journal | None = None
    recovery: Recovery | None = None
    """What the journal held when the app was built (jobs a crash interrupted), for the front end to restore."""

    @property
    def events(self) -> JobEvents:
        """Where front ends subscribe to their jobs' events (:class:`bridge.app.job_events.JobEvents`)."""
        return self.jobs.events

    @classmethod
    def build(cls, config: Config, *, engine: Engine | None = None,
              presets: PresetLibrary | None = None, output: OutputDevice | None = None,
              journal: bool = False) -> App:
        """Load the model (once) and the preset banks, and wire every service to them.

        ``journal``: keep a job journal in the state folder (the daemon does; a one-shot command
        does not), read what it holds, and remove the temporary files of writes a crash cut short.
        """
        if presets is None:
            presets = load_presets(config.presets_dir)
        opened = open_journal(config) if journal else None
        link: LinkSession | None = None
        try:
            if engine is None:
                apply_threads(plan_compute(config.threads, config.priority))
                engine = Engine(load_model(config.model, device=config.device, precision=config.precision))
            if output is None:  # its playback children start at this (the main) thread's priority
                output = OutputDevice(config.audio_device, popen=Launcher().popen)
            link = LinkSession.join() if config.link else None  # after the model: no fork once Link exists
            bridge = Bridge(engine, config, presets, output=output, link=link)
        except BaseException:
            if opened is not None:
                opened[0].close()
            if link is not None:
                link.close()
            raise
        app = cls.around(config, bridge, journal=opened[0] if opened else None)
        app.recovery = opened[1] if opened else None
        return app

    @classmethod
    def around(cls, config: Config, bridge: Bridge, *, journal: Journal | None = None) -> App:
        """An App around a Bridge already built, sharing its output device, jam controller, banks and clocks."""
        return cls.assemble(config, bridge, output=bridge.output, jam=bridge.jam, presets=bridge.presets,
                            midi_clock=bridge.midi_clock, link=bridge.link, journal=journal)

    @classmethod
    def assemble(cls, config: Config, runner: Runner, *, output: OutputDevice, jam: JamController,
                 presets: PresetLibrary | None = None, midi_clock: MidiClock | None = None,
                 link: LinkSession | None = None, journal: Journal | None = None) -> App:
        """An App of parts already built: the facade that runs jobs (a Bridge, or a test's stand-in) and
        what front ends use beside it. The job queue is made here, its worker at the configured priority."""
        plan = plan_compute(config.threads, config.priority)

        def lower_worker() -> str:
            return yield_this_thread(plan)

        jobs = JobQueue(runner, config.queue_size, JobEvents(), journal=journal, on_worker_start=lower_worker)
        return cls(config=config, bridge=runner, jobs=jobs, output=output, jam=jam, presets=presets,
                   midi_clock=midi_clock, link=link, journal=journal)

    def restore(self, *, fresh: bool = False) -> list[Job]:
        """Queue again the jobs the journal held unfinished (a crash); ``fresh``: end them cancelled instead.

        Call it once the front ends have subscribed: each turns its own jobs' origins back.
        """
        if self.recovery is None:
            return []
        return self.jobs.restore(self.recovery.unfinished, self.recovery.ended, fresh=fresh)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel and report every job, then let go of the output device."""
        self.jobs.close(timeout)
        self.output.close()
        if self.link is not None:
            self.link.close()
        if self.journal is not None:
            self.journal.close()


def open_journal(config: Config) -> tuple[Journal, Recovery]:
    """Open the daemon's job journal and clear what a crash left half written in the output folder."""
    out = config.resolved_output_dir()
    state = Path(config.state_dir).expanduser() if config.state_dir is not None else default_state_folder(out)
    removed = remove_stale_temporaries(out, older_than=time.time())
    if removed:
        log.warning("removed %d temporary file(s) that a stopped bridge left half written in %s", len(removed), out)
    journal = Journal(state)
    return journal, journal.open()  # an unreadable journal is moved aside, in one log line of its own

