"""The facade with the business rules: what a request may be, and running one job on the services.

Front ends build requests here (:meth:`Bridge.make_request`, :meth:`Bridge.preset_request`) and the
job queue's worker runs them (:meth:`Bridge.run`). The work itself is done by small services, each
one idea: planning (``planning``: sample-exact layouts), rendering (``rendering``: the engine's
codes to finished audio), the result store (``store``: names, atomic files, sidecars), the output
device (``output``) and the jam (``jam``). ``bridge.app.root`` builds them once.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bridge import __version__, audio
from bridge.app import loops, planning
from bridge.app.jam import JamController
from bridge.app.output import OutputDevice
from bridge.app.rendering import ChunkWriter, Renderer
from bridge.app.results import Chunk, JobResult
from bridge.app.storage import check_output_folder, estimate_bytes
from bridge.app.store import ResultStore
from bridge.config import Config
from bridge.engine import Engine
from bridge.errors import BadArgs, NotFound
from bridge.options import Request


class Bridge:
    """Owns the engine's services; every front end's job goes through it."""

    def __init__(self, engine: Engine, config: Config, presets: Any | None = None, *,
                 output: OutputDevice | None = None, store: ResultStore | None = None) -> None:
        self.engine = engine
        self.config = config
        self.presets = presets
        self.store = store if store is not None else ResultStore(config.resolved_output_dir())
        self.output = output if output is not None else OutputDevice(config.audio_device)
        self.renderer = Renderer(engine)
        self.loops = loops.LoopMaker(engine)
        self.jam = JamController(engine, self.output, self.store, presets)

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
        }

    def _model_facts(self) -> dict[str, Any]:
        loaded = self.engine.loaded
        return {"model": loaded.name, "device": str(loaded.device), "dtype": str(loaded.dtype).replace("torch.", "")}

    # -- requests ---------------------------------------------------------------------------
    def make_request(self, mode: str, prompt: str, seconds: float | None, clip: str | None,
                     options: Mapping[str, Any], clip_after: str | None = None) -> Request:
        """A validated Request from a front end's arguments and typed options (``clip_after``: a fill's second clip)."""
        base = Request(mode=mode, prompt=prompt, seconds=seconds if seconds else None, clip=clip or None,  # type: ignore[arg-type]
                       clip_after=clip_after or None)
        return self.check(base.with_options(options).validate())

    def check(self, request: Request) -> Request:
        """The rules that need the running bridge: the file name, streaming's limits, a melody model."""
        if request.name is not None:
            self.store.result_path(request.name, request.format)  # refuse a bad name before queueing
        if request.stream and (request.variations > 1 or request.include_prompt or request.normalize != "off"):
            raise BadArgs("stream 1 sends the audio as it is made, so it works with one variation, without "
                          "include_prompt and with normalize off: drop those options or use stream 0")
        self.engine.check_text(request.negative, "negative prompt")
        if request.mode in loops.LOOP_MODES:
            plan = planning.plan(request, None, self.engine)  # the first clip's rate is not needed for the limits
            loops.check(request, self.engine, plan.out_samples, plan.out_rate)
        if request.mode == "melody" and not self.engine.loaded.is_melody:
            raise BadArgs(
                f"melody mode needs a melody checkpoint, and the bridge runs {self.engine.loaded.name}: "
                "restart it with --model facebook/musicgen-melody (or tiny-random-melody to test)"
            )
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
            return self.jam.run(job_id, request, is_cancelled, on_chunk, on_warning)
        started = time.monotonic()
        if request.play:
            self.output.check_available()  # no device: fail before generating
        clip = audio.read_clip(request.clip) if request.clip else None
        after = audio.read_clip(request.clip_after) if request.clip_after and request.mode == "infill" else None
        plan = planning.plan(request, clip, self.engine)
        self._check_room(request, plan, clip, after)
        seed = request.seed if request.seed is not None else secrets.randbits(31)
        stem = self.store.stem(job_id, request)
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
        paths, sidecars = self.store.write(job_id, request, plan, seed, clip, outputs, time.monotonic() - started,
                                           stem, self._model_facts(), details)
        progress(1.0)
        if request.play:
            self.output.play_now(paths[0])
        return JobResult(paths=paths, seconds=outputs[0].shape[-1] / plan.out_rate, sample_rate=plan.out_rate,
                         sidecars=sidecars)

    def _check_room(self, request: Request, plan: planning.Plan, clip: audio.Clip | None,
                    after: audio.Clip | None = None) -> None:
        """StorageError before any generation when the output folder cannot take the result."""
        around = [c for c in (clip, after) if c is not None] if request.include_prompt else []
        samples = plan.out_samples + sum(round(c.seconds * plan.out_rate) for c in around)
        channels = max(self.engine.channels, clip.data.shape[0] if clip is not None else 1)
        check_output_folder(self.store.folder, estimate_bytes(samples, channels, variations=request.variations,
                                                              fmt=request.format, copies=2 if request.stream else 1))

    def plan(self, request: Request, clip: audio.Clip | None) -> planning.Plan:
        """The sample-exact layout ``run`` would use for ``request`` (for tests and tools)."""
        return planning.plan(request, clip, self.engine)

