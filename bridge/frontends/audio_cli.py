"""`musicgen-bridge devices | play | jam`: the audio-device commands of the CLI."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from bridge.config import PRECISION_HELP
from bridge.frontends.cli_options import add_option_flags, options_from_args
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
    jam.add_argument("--record", type=Path, default=None, help="write exactly what was played to this file")
    jam.add_argument("--model", default=None, help="as for generate (default facebook/musicgen-small)")
    jam.add_argument("--device", default=None, help="auto, cpu, cuda, mps")
    jam.add_argument("--precision", default=None, help=PRECISION_HELP)
    jam.add_argument("--output-dir", type=Path, default=None)
    jam.add_argument("--config", type=Path, default=None)
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
    from bridge.app.jam import run_jam  # noqa: PLC0415
    from bridge.engine import Engine  # noqa: PLC0415
    from bridge.engine.jam import Jam, JamSettings  # noqa: PLC0415
    from bridge.engine.models import load_model  # noqa: PLC0415
    from bridge.frontends.cli import _config_from_args  # noqa: PLC0415

    config = _config_from_args(args)
    settings = JamSettings(prompt=args.prompt, **options_from_args(args, names("jam"))).check()
    player = None
    if not args.no_play:
        from bridge.audio.playback import Player  # noqa: PLC0415

        # room for the longest pre-roll a slow machine may need, started by the runner
        buffer = (args.for_seconds or 60.0) + 30.0
        player = Player(device=args.audio_device, buffer_seconds=buffer, start_seconds=buffer)
    sys.stderr.write(f"loading {config.model} ...\n")
    engine = Engine(load_model(config.model, device=config.device, precision=config.precision))
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    folder = config.resolved_output_dir() / "jam"
    folder = folder / _next_take_name(folder)
    try:
        take = run_jam(Jam(engine, settings), folder, stop.is_set, player=player, for_seconds=args.for_seconds,
                       record=args.record, warn=_say, on_segment=_announce)
    finally:
        signal.signal(signal.SIGINT, previous)
    if take.generation_seconds:
        gens = sorted(take.generation_seconds)
        sys.stderr.write(f"{len(gens)} segment(s) of {take.segment_seconds[0]:.2f} s, generated in "
                         f"{gens[len(gens) // 2]:.2f} s (median) / {gens[-1]:.2f} s (slowest): "
                         f"{take.realtime_factor:.2f}x real time; first audio after "
                         f"{take.first_audio_seconds or 0.0:.2f} s"
                         + (f", playback began with {take.preroll_seconds:.2f} s queued" if player else "") + "\n")
    sys.stderr.write(f"underruns: {take.underruns}\n")
    for path in [*take.segments, take.path]:
        print(path)
    return 0


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")


def _announce(index: int, path: Path, start: float) -> None:
    sys.stderr.write(f"segment {index} at {start:.2f} s: {path}\n")


def _next_take_name(folder: Path) -> str:
    import time  # noqa: PLC0415

    return time.strftime("%Y%m%d-%H%M%S")
