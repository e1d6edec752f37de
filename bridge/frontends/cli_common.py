"""What the one-shot commands (``cli``) and the audio commands (``audio_cli``) share: config and the job run."""

from __future__ import annotations

import argparse
from typing import Any

from bridge.config import Config, load_config
from bridge.frontends.osc.serve import check_link_argument

CLI = "cli"
"""The one-shot commands' front-end name: their jobs' events go to their own listener."""


def config_from_args(args: argparse.Namespace) -> Config:
    """The config file (``--config``) with the command's flags over it; ``--link`` is checked before the model loads."""
    return load_config(args.config, overrides={
        "model": args.model, "device": args.device, "precision": args.precision, "output_dir": args.output_dir,
        "threads": getattr(args, "threads", None), "priority": getattr(args, "priority", None),
        "link": check_link_argument(args) or None,
    })


def run_job(app: Any, request: Any, kind: Any) -> Any:
    """Submit one job to the app's queue and wait for its end; its error is raised, Ctrl-C cancels it."""
    job = app.jobs.submit(request, kind=kind, frontend=CLI)
    try:
        app.jobs.wait(job)
    except KeyboardInterrupt:
        app.jobs.cancel(job.id)
        app.jobs.wait(job, timeout=30.0)
        raise
    if job.error is not None:
        raise job.error
    return job.result
