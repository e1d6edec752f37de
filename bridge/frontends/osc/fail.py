"""``/musicgen/fail``, the reply that reports an error: its arguments built in one place."""

from __future__ import annotations

from bridge.errors import BridgeError

FAIL = "/musicgen/fail"


def fail_args(address: str, job_id: str, error: BridgeError) -> list[str]:
    """The arguments of ``/musicgen/fail <address> <id> <code> <message>``: the address answered and the
    job's id (each "" where there is none), then the error's wire code and message."""
    return [address, job_id, error.code, error.message]
