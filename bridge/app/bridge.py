"""The facade with the business rules: what a request may be, and running one job on the services.

Front ends ask for requests here (:meth:`Bridge.make_request`, :meth:`Bridge.preset_request`: built by
:mod:`bridge.app.requests`, then held to the rules that need the running bridge) and the job queue's
worker runs them (:meth:`Bridge.run`). The work itself is done by small services, each
one idea: planning (``planning``: sample-exact layouts), rendering (``rendering``: the engine's
codes to finished audio), the result store (``store``: names, atomic files, sidecars), the output
device (``output``) and the jam (``jam``). ``bridge.app.root`` builds them once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bridge import __version__, audio
from bridge.app import loops, planning
from bridge.app.budget import ClipShape, Cost, Limits, check_cost, job_cost, prompt_tail_seconds
from bridge.app.jam import JamController
from bridge.app.link import LinkSession
from bridge.app.midi_clock import MidiClock
from bridge.app.output import OutputDevice
from bridge.app.rendering import ChunkWriter, Renderer
from bridge.app.requests import build_request
from bridge.app.results import Chunk, JobResult
from bridge.app.storage import check_output_folder, estimate_bytes
from bridge.app.store import ResultStore
from bridge.compute import plan_compute
from bridge.config import Config
from bridge.engine import Engine
from bridge.errors import BadArgs, Cancelled, NoAudioDevice, NotFound
from bridge.options import Request, pick_seed

PLAY_ZERO = "send it again with play 0 to get the file without playing it"


def check_sync(request: Request, link: LinkSession | None, midi: MidiClock | None = None) -> None:
    """``sync`` is a jam's; ``sync link``/``midi`` need their clock and take the tempo from it."""
    if request.mode != "jam":
        raise BadArgs(f"sync {request.sync} is for a jam (/musicgen/jam/start): leave it out of this request")
    if request.sync == "link" and link is None:
        raise BadArgs("sync link needs the bridge in an Ableton Link session: start it with --link "
                      "(musicgen-bridge serve --link), or use sync free")
    if request.sync == "midi" and (midi is None or not midi.attached):
        raise BadArgs("sync midi needs MIDI clock: start the bridge with --midi and send it the DAW's clock "
                      "(with Song Position), or use sync free")
    if request.bpm is not None:
        what = "the Link session" if request.sync == "link" else "MIDI clock"
        raise BadArgs(f"bpm {request.bpm:g} cannot be given with sync {request.sync}: {what} sets the tempo "
                      "(change it in the DAW); leave bpm out")


class Bridge:
    """Owns the engine's services; every front end's job goes through it."""

    def __init__(self, engine: Engine, config: Config, presets: Any | None = None, *,
                 output: OutputDevice | None = None, store: ResultStore | None = None,
                 link: LinkSession | None = None) -> None:
        self.engine = engine
        self.config = config
        self.compute = plan_compute(config.threads, config.priority)
        self.presets = presets
        self.store = store if store is not None else ResultStore(config.resolved_output_dir())
        self.output = output if output is not None else OutputDevice(config.audio_device)
        self.renderer = Renderer(engine)
        self.link = link
        self.midi_clock = MidiClock()  # fed by the MIDI front end when there is one (serve --midi)
        self.jam = JamController(self.output, self.store, presets, link=link, midi=self.midi_clock)
        self.limits = Limits.for_machine(config.max_job_memory, engine.free_device_memory())
        self.loops = loops.LoopMaker(engine)

    @property
    def output_dir(self) -> Path:
        return self.store.folder

    # -- facts ------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        loaded = self.engine.loaded
        return {
            "version": __version__,
            "model": loaded.name,
            "device": str(loaded.device),
            "dtype": str(loaded.dtype).replace("torch.", ""),
            "precision": loaded.precision,
            "kernel": self.engine.loop.fast.describe() if self.engine.loop.fast is not None else "transformers",
            "sample_rate": loaded.sample_rate,
            "channels": loaded.channels,
            "melody": loaded.is_melody,
            "underruns": self.output.underruns,
            "jamming": self.jam.running,
            "compute": self.compute.describe(),
        }

    def _model_facts(self) -> dict[str, Any]:
        loaded = self.engine.loaded
        fast = self.engine.loop.fast
        return {"model": loaded.name, "device": str(loaded.device), "dtype": str(loaded.dtype).replace("torch.", ""),
                "engine": fast.facts() if fast is not None else {"kernel": "transformers"}}

    # -- requests ---------------------------------------------------------------------------
    def make_request(self, mode: str, prompt: str, seconds: float | None, clip: str | None,
                     options: Mapping[str, Any], clip_after: str | None = None) -> Request:
        """A validated Request from a front end's arguments and typed options (``clip_after``: a fill's second clip).

        A length of 0 and an empty clip mean none (OSC sends 0 when bpm and bars give the length)."""
        return self.check(build_request(mode, prompt, options, seconds=seconds or None, clip=clip or None,
                                        clip_after=clip_after or None))

    def check(self, request: Request) -> Request:
        """The rules that need the running bridge: the file name, streaming's limits, a melody model, and
        the job's cost (samples and memory, from its plan and its clip's header) within the limits."""
        if request.name is not None:
            self.store.result_path(request.name, request.format)  # refuse a bad name before queueing
        if request.stream and (request.variations > 1 or request.include_prompt or request.normalize != "off"):
            raise BadArgs("stream 1 sends the audio as it is made, so it works with one variation, without "
                          "include_prompt and with normalize off: drop those options or use stream 0")
        if request.sync != "free":
            check_sync(request, self.link, self.midi_clock)
        self.engine.check_text(request.negative, "negative prompt")
        if request.mode in loops.LOOP_MODES:
            plan = planning.plan(request, None, self.engine)  # the first clip's rate is not needed for the limits
            loops.check(request, self.engine, plan.out_samples, plan.out_rate)
        if request.mode == "melody" and not self.engine.loaded.is_melody:
            raise BadArgs(
                f"melody mode needs a melody checkpoint, and the bridge runs {self.engine.loaded.name}: "
                "restart it with --model facebook/musicgen-melody (or tiny-random-melody to test)"
            )
        if request.mode != "jam":
            clip = audio.probe_clip(request.clip) if request.clip else None  # the header only: bad_audio now
            if request.clip_after and request.mode == "infill":
                audio.probe_clip(request.clip_after)  # a fill's second clip too
            check_cost(self._cost(request, planning.plan(request, clip, self.engine), clip), self.limits)
        return request

    def preset_request(self, bank: str, preset: str, options: Mapping[str, Any]) -> Request:
        """A preset as a request: bank defaults < preset < ``options``; a preset made for another model is refused."""
        if self.presets is None:
            raise NotFound("no preset banks are loaded: start the bridge with --presets DIR")
        request: Request = self.presets.request(bank, preset, dict(options), model=self.engine.loaded.name)
        return self.check(request)

    # -- running ----------------------------------------------------------------------------
    def run(self, job_id: str, request: Request, progress: Callable[[float], None],
            is_cancelled: Callable[[], bool], on_chunk: Callable[[Chunk], None] | None = None,
            on_warning: Callable[[str], None] | None = None) -> JobResult:
        """Generate, post-process and write the files for one job. Blocks; one caller at a time (the worker).

        ``on_warning`` hears what the user should know while the job runs (a jam slower than real time).
        """
        if request.mode == "jam":
            return self.jam.run(self.engine, job_id, request, is_cancelled, on_chunk, on_warning)
        started = time.monotonic()
        if request.play:
            self.check_output(PLAY_ZERO)  # no device: fail before generating
        info = audio.probe_clip(request.clip) if request.clip else None
        plan = planning.plan(request, info, self.engine)
        check_cost(self._cost(request, plan, info), self.limits)  # again: a restored job, a changed file
        if plan.rate_note and on_warning is not None:
            on_warning(plan.rate_note)
        clip = (audio.read_clip(request.clip, tail_seconds=prompt_tail_seconds(request, plan, self.engine))
                if request.clip else None)
        after = audio.read_clip(request.clip_after) if request.clip_after and request.mode == "infill" else None
        self._check_room(request, plan, clip, after)
        seed = pick_seed(request.seed)  # a journaled job has its seed already (Journal.accept)
        stem = self.store.stem(job_id, request)
        stop_if_cancelled(is_cancelled)
        details = None
        if request.mode == "loop":
            wave, details = self.loops.loop(request, plan, seed, progress, is_cancelled)
            outputs = [wave]
        elif request.mode == "infill" and clip is not None and after is not None:
            wave, details = self.loops.infill(request, plan, clip, after, seed, progress, is_cancelled)
            outputs = [wave]
        else:
            writer = (ChunkWriter(self.engine, request, plan, clip, self.store.chunk_folder(stem), on_chunk)
                      if request.stream else None)
            outputs = self.renderer.render(request, plan, clip, seed, progress, is_cancelled, writer)
        stop_if_cancelled(is_cancelled)
        paths, sidecars = self.store.write(job_id, request, plan, seed, clip, outputs, time.monotonic() - started,
                                           stem, self._model_facts(), details, is_cancelled=is_cancelled)
        progress(1.0)
        if request.play:
            self.output.play_now(paths[0])
        return JobResult(paths=paths, seconds=outputs[0].shape[-1] / plan.out_rate, sample_rate=plan.out_rate,
                         sidecars=sidecars)

    def _cost(self, request: Request, plan: planning.Plan, clip: ClipShape | None) -> Cost:
        return job_cost(request, plan, clip, self.engine, self.engine.text_tokens(plan.text, request.negative))

    def check_output(self, advice: str) -> None:
        """NoAudioDevice, with ``advice`` on how to do without it, when there is no output device."""
        try:
            self.output.check_available()
        except NoAudioDevice as exc:
            raise NoAudioDevice(f"{exc.message}; {advice}") from None

    def _check_room(self, request: Request, plan: planning.Plan, clip: audio.Clip | None,
                    after: audio.Clip | None = None) -> None:
        """StorageError before any generation when the output folder cannot take the result."""
        around = [c for c in (clip, after) if c is not None] if request.include_prompt else []
        samples = plan.out_samples + sum(round(c.seconds * plan.out_rate) for c in around)
        channels = max(self.engine.channels, clip.channels if clip is not None else 1)
        check_output_folder(self.store.folder, estimate_bytes(samples, channels, variations=request.variations,
                                                              fmt=request.format, copies=2 if request.stream else 1))


def stop_if_cancelled(is_cancelled: Callable[[], bool]) -> None:
    """Cancelled when the job was cancelled: called between stages, so a cancel never waits for the whole job."""
    if is_cancelled():
        raise Cancelled("the job was cancelled")
