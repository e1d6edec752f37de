"""`musicgen-bridge`: generate | continue | melody | loop | infill | serve | send | bench | devices | jam.

Written paths go to stdout, one per line (the last line is the main result); progress goes to
stderr; every failure is one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from bridge import __version__
from bridge.app.jobs import NullListener
from bridge.compute import prepare_environment
from bridge.config import PRECISION_HELP, PRIORITY_HELP, THREADS_HELP
from bridge.errors import BadArgs, BridgeError, exit_code
from bridge.frontends import audio_cli, bench_cli, client
from bridge.frontends.cli_common import CLI, config_from_args, run_job
from bridge.frontends.cli_options import add_option_flags, options_from_args
from bridge.frontends.osc import serve
from bridge.options import names


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line saying what to do."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most ~10 times a second.

    Its clock starts at :meth:`start` (the job's start), so loading the model and building the native
    kernel, which are reported on their own lines, never count in the job's time or its ETA; the ETA
    is the rate seen since the first update, applied to what is left.
    """

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.started: float | None = None
        self._first: tuple[float, float] | None = None  # (time, fraction) of the first update
        self._last = 0.0
        self._finished = False

    def start(self) -> None:
        """Start the clock now (the job begins)."""
        self.started = time.monotonic()
        self._first = None

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if self._finished or (fraction < 1.0 and now - self._last < 0.1):
            return
        if self.started is None:
            self.started = now
        if self._first is None:
            self._first = (now, fraction)
        self._finished = fraction >= 1.0
        self._last = now
        filled = int(self.width * max(0.0, min(1.0, fraction)))
        elapsed = now - self.started
        first_at, first_fraction = self._first
        done = fraction - first_fraction
        eta = (now - first_at) / done * (1.0 - fraction) if done > 0.01 else 0.0
        bar = "#" * filled + "-" * (self.width - filled)
        end = "\n" if fraction >= 1.0 else ""
        self.stream.write(f"\r{self.label} [{bar}] {fraction * 100:5.1f}% {elapsed:5.1f}s eta {eta:5.1f}s{end}")
        self.stream.flush()


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="Hugging Face id, local folder, or a built-in (tiny-random, "
                   "tiny-random-melody, small-arch-random, ...); default facebook/musicgen-small")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default=None, help=PRECISION_HELP)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--priority", default=None, help=PRIORITY_HELP)
    p.add_argument("--output-dir", default=None, type=Path, help="where results go (default ~/MusicGenBridge/out)")
    p.add_argument("--config", default=None, type=Path, help="a YAML file of settings")


#: the options only ``continue`` has flags for; every other ``cli`` option is a flag of every one-shot command
_CONTINUE_ONLY = ("prompt_seconds", "include_prompt")
#: the options only ``loop`` and ``infill`` have flags for
_LOOP_ONLY = ("candidates",)


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    add_option_flags(p, [name for name in names("cli") if name not in _CONTINUE_ONLY + _LOOP_ONLY])
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="musicgen-bridge", description="A local MusicGen daemon and tools for DAWs.")
    parser.add_argument("--version", action="version", version=f"musicgen-bridge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="generate audio from a text prompt")
    gen.add_argument("prompt", help='the text prompt ("" for unconditional)')
    _add_generation_args(gen)
    _add_model_args(gen)

    cont = sub.add_parser("continue", help="continue a clip (the output follows the clip, sample-aligned)")
    cont.add_argument("clip", help="the audio file to continue")
    cont.add_argument("prompt", nargs="?", default="", help="an optional text prompt")
    add_option_flags(cont, _CONTINUE_ONLY)
    _add_generation_args(cont)
    _add_model_args(cont)

    mel = sub.add_parser("melody", help="generate in a style while following a clip's melody")
    mel.add_argument("clip", help="the audio file whose melody to follow")
    mel.add_argument("prompt", help="the text prompt describing the style")
    _add_generation_args(mel)
    _add_model_args(mel)

    loop = sub.add_parser("loop", help="a loop that repeats without a seam (exactly --bars at --bpm, or --seconds)")
    loop.add_argument("prompt", help="the text prompt")
    add_option_flags(loop, _LOOP_ONLY)
    _add_generation_args(loop)
    _add_model_args(loop)

    fill = sub.add_parser("infill", help="new audio between two clips: continues BEFORE and leads into AFTER")
    fill.add_argument("clip", metavar="before", help="the audio file the fill follows")
    fill.add_argument("after", help="the audio file the fill leads into")
    fill.add_argument("prompt", nargs="?", default="", help="an optional text prompt")
    add_option_flags(fill, _CONTINUE_ONLY + _LOOP_ONLY)
    _add_generation_args(fill)
    _add_model_args(fill)

    # the commands whose code lives in their own modules; each adds its own parsers
    serve.add_parsers(sub)
    client.add_parsers(sub)
    bench_cli.add_parsers(sub)
    audio_cli.add_parsers(sub)
    return parser


def _options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options given as flags; ``--seconds`` is the length argument, passed on its own."""
    return options_from_args(args, [name for name in names("cli") if name != "seconds"])


def _run_one_shot(args: argparse.Namespace) -> int:
    from bridge.app.jobs import JobKind  # noqa: PLC0415
    from bridge.app.requests import build_request  # noqa: PLC0415
    from bridge.app.root import App  # noqa: PLC0415  (imports torch: keep --help fast)
    from bridge.app.storage import check_output_folder  # noqa: PLC0415

    mode = {"generate": "text", "continue": "continue", "melody": "melody", "loop": "loop",
            "infill": "infill"}[args.command]
    kind = {"text": JobKind.GENERATE, "continue": JobKind.CONTINUE, "melody": JobKind.MELODY, "loop": JobKind.LOOP,
            "infill": JobKind.INFILL}[mode]
    config = config_from_args(args)
    after = getattr(args, "after", None)
    # Check the arguments before spending seconds on loading the model.
    build_request(mode, args.prompt, _options_from_args(args), seconds=args.seconds, clip=getattr(args, "clip", None),
                  clip_after=after)
    for path in (getattr(args, "clip", None), after):
        if path:
            from bridge.audio import probe_clip  # noqa: PLC0415

            probe_clip(path)  # a missing or broken clip is not_found / bad_audio before the model loads
    check_output_folder(config.resolved_output_dir())  # refuse now, not after minutes of generating
    if not args.quiet:
        sys.stderr.write(f"loading {config.model} ...\n")
    app = App.build(config)
    app.events.subscribe(CLI, ProgressListener(None if args.quiet else ProgressBar(mode)))
    try:
        if mode == "melody" and not app.bridge.engine.loaded.is_melody:
            raise BadArgs(f"melody mode needs a melody checkpoint, and {config.model} is not one: run the command "
                          "again with --model facebook/musicgen-melody (or tiny-random-melody to test)")
        request = app.bridge.make_request(mode, args.prompt, args.seconds, getattr(args, "clip", None),
                                          _options_from_args(args), clip_after=after)
        result = run_job(app, request, kind)
    finally:
        app.close()
    for path in result.paths:
        print(path)
    return 0


class ProgressListener(NullListener):
    """The one-shot CLI's job listener: progress to a bar on stderr, warnings as lines, the rest ignored."""

    def __init__(self, bar: Callable[[float], None] | None) -> None:
        self.bar = bar

    def queued(self, job: Any, position: int) -> None:
        del job, position
        start = getattr(self.bar, "start", None)
        if start is not None:
            start()  # the model is loaded: the job's own time starts here

    def progress(self, job: Any, fraction: float) -> None:
        del job
        if self.bar is not None:
            self.bar(fraction)

    def warning(self, job: Any, message: str) -> None:
        del job
        sys.stderr.write(message + "\n")

    def done(self, job: Any, result: Any) -> None:
        del job, result
        if self.bar is not None:
            self.bar(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    prepare_environment()  # before torch is imported: idle OpenMP threads sleep instead of spinning beside a DAW
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    try:
        if args.command in ("generate", "continue", "melody", "loop", "infill"):
            return _run_one_shot(args)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except BridgeError as exc:
        sys.stderr.write(f"musicgen-bridge: {exc.code}: {exc.message}\n")
        return exit_code(exc.code)
    except KeyboardInterrupt:
        sys.stderr.write("musicgen-bridge: interrupted\n")
        return 130


def _quiet_libraries() -> None:
    try:
        from transformers.utils import logging as hf_logging  # noqa: PLC0415
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


if __name__ == "__main__":
    raise SystemExit(main())
