"""`musicgen-bridge devices | play | jam`: the audio-device commands of the CLI."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from bridge.app.jobs import NullListener
from bridge.config import PRECISION_HELP, PRIORITY_HELP, THREADS_HELP
from bridge.errors import BadArgs
from bridge.frontends.cli_common import CLI, config_from_args, run_job
from bridge.frontends.cli_options import add_option_flags, options_from_args
from bridge.frontends.osc.serve import add_link_argument
from bridge.options import names


def add_parsers(sub: Any) -> None:
    devices = sub.add_parser("devices", help="list the audio outputs sounddevice sees")
    devices.set_defaults(handler=_devices)

    play = sub.add_parser("play", help="play an audio file on an output device")
    play.add_argument("file", help="the audio file")
    play.add_argument("--audio-device", default=None, help="an index or part of a name (see `devices`)")
    play.set_defaults(handler=_play)

    jam = sub.add_parser("jam", help="keep continuing generated audio, live, in whole bars")
    jam.add_argument("prompt", help="the text prompt")
    add_option_flags(jam, names("jam"), jam=True)
    jam.add_argument("--for", dest="for_seconds", type=float, default=None, help="stop after this many seconds "
                     "of audio (default: until Ctrl-C)")
    jam.add_argument("--audio-device", default=None, help="an index or part of a name (see `devices`)")
    jam.add_argument("--no-play", action="store_true", help="write the segments without playing them")
    jam.add_argument("--record", type=Path, default=None, help="write exactly what was played to this file (with "
                     "--no-play: the take, as generated)")
    jam.add_argument("--model", default=None, help="as for generate (default facebook/musicgen-small)")
    jam.add_argument("--device", default=None, help="auto, cpu, cuda, mps")
    jam.add_argument("--precision", default=None, help=PRECISION_HELP)
    jam.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    jam.add_argument("--priority", default=None, help=PRIORITY_HELP)
    jam.add_argument("--output-dir", type=Path, default=None)
    jam.add_argument("--config", type=Path, default=None)
    add_option_flags(jam, ("sync", "ahead_bars"), jam=True)
    add_link_argument(jam)
    jam.set_defaults(handler=_jam)


def _devices(_args: argparse.Namespace) -> int:
    from bridge.audio.playback import list_devices  # noqa: PLC0415

    found = list_devices()
    if not found:
        sys.stderr.write("no audio outputs found (no sound card, and no JACK or PulseAudio server running)\n")
        return 8
    for dev in found:
        mark = "*" if dev.is_default else " "
        print(f"{mark}{dev.index:3d}  {dev.name}  ({dev.hostapi}, {dev.channels} ch, {dev.default_rate:g} Hz)")
    return 0


def _play(args: argparse.Namespace) -> int:
    from bridge.audio.playback import Player  # noqa: PLC0415

    player = Player(device=args.audio_device)
    player.play_file(args.file)
    player.wait()
    print(f"underruns: {player.underruns}")
    return 0


def _jam(args: argparse.Namespace) -> int:
    import dataclasses  # noqa: PLC0415

    from bridge.app.jobs import JobKind  # noqa: PLC0415
    from bridge.app.output import OutputDevice, player_buffer_seconds  # noqa: PLC0415
    from bridge.app.root import App  # noqa: PLC0415
    from bridge.app.storage import check_output_folder  # noqa: PLC0415
    from bridge.compute import Launcher  # noqa: PLC0415

    config = config_from_args(args)
    options = {**options_from_args(args, (*names("jam"), "sync", "ahead_bars")), "play": not args.no_play}
    if args.record is not None and not args.record.expanduser().parent.is_dir():
        raise BadArgs(f"--record {args.record}: the folder {args.record.expanduser().parent} does not exist: create "
                      "it or record somewhere else")
    # room for the longest pre-roll a slow machine may need, started by the jam; the playback child is
    # started from a thread that keeps normal priority (the worker that opens it runs lowered)
    output = OutputDevice(args.audio_device, buffer_seconds=player_buffer_seconds(args.for_seconds),
                          popen=Launcher().popen)
    check_output_folder(config.resolved_output_dir())  # refuse now, not after loading the model
    sys.stderr.write(f"loading {config.model} ...\n")
    app = App.build(config, output=output)
    app.events.subscribe(CLI, _JamPrinter())
    try:
        request = app.bridge.make_request("jam", args.prompt, None, None, options)
        request = dataclasses.replace(request, seconds=args.for_seconds,
                                      extra={**request.extra, **({"record": str(args.record)} if args.record else {})})
        previous = signal.signal(signal.SIGINT, lambda *_: _stop_jam(app))
        try:
            result = run_job(app, request, JobKind.JAM)
        finally:
            signal.signal(signal.SIGINT, previous)
    finally:
        app.close()
    take = result.take
    if take is not None and take.generation_seconds:
        sys.stderr.write(jam_summary(take, played=request.play) + "\n")
    if take is not None and take.record_path is not None:
        sys.stderr.write(f"recorded: {take.record_path}\n")
    sys.stderr.write(f"underruns: {take.underruns if take is not None else 0}\n")
    for path in [*(take.segments if take is not None else []), *result.paths]:
        print(path)
    return 0


def jam_summary(take: Any, played: bool) -> str:
    """One line on how the jam went; its real-time factor is its audio over its generation time, both shown."""
    gens = sorted(take.generation_seconds)
    audio_seconds = sum(take.segment_seconds)
    generated = sum(gens)
    factor = audio_seconds / generated if generated > 0 else 0.0
    return (f"seed {take.seed}: {len(gens)} segment(s), {audio_seconds:.2f} s of audio generated in {generated:.2f} s "
            f"(median {gens[len(gens) // 2]:.2f} s, slowest {gens[-1]:.2f} s a segment): "
            f"{audio_seconds:.2f} / {generated:.2f} = {factor:.2f}x real time; first audio after "
            f"{take.first_audio_seconds or 0.0:.2f} s"
            + (f", playback began with {take.preroll_seconds:.2f} s queued" if played else ""))


def _stop_jam(app: Any) -> None:
    """Ctrl-C: the jam stops at the end of its segment and keeps its take; before it runs, it is cancelled."""
    if app.jam.running:
        app.jam.stop()
    else:
        app.jobs.cancel("*")


class _JamPrinter(NullListener):
    """The jam command's job listener: each segment and warning as a line on stderr."""

    def chunk(self, job: Any, chunk: Any) -> None:
        del job
        _announce(chunk.index, chunk.path, chunk.start_seconds, chunk.beat)

    def warning(self, job: Any, message: str) -> None:
        del job
        _say(message)


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")


def _announce(index: int, path: Path, start: float, beat: float = -1.0) -> None:
    on_beat = f" (Link beat {beat:g})" if beat >= 0 else ""
    sys.stderr.write(f"segment {index} at {start:.2f} s{on_beat}: {path}\n")
