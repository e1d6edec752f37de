"""Typed errors with stable wire codes: the one exception tree of musicgen-bridge.

BridgeError                 base; ``code`` is the word sent in ``/musicgen/fail``
  BadArgs        bad_args        an argument or option is missing, unknown or out of range
  NotFound       not_found       a clip, preset, bank or job id that does not exist
  BadAudio       bad_audio       a file that is not usable audio (corrupt, empty, too long)
  Busy           busy            the job queue is full
  Cancelled      cancelled       the job was cancelled by a client or by shutdown
  ModelError     model_error     the model could not be loaded or failed while generating
  Unauthorized   unauthorized    a non-loopback request without the shared token
  NoAudioDevice  no_audio_device playback asked for where there is no usable output device
  StorageError   storage         the output or state folder is missing, not writable, or full
  UnknownAddress unknown_address an OSC address the bridge has no route for (the reply suggests the closest)
  Internal       internal        a bug: the message says where to report it

One class per code (:data:`ERRORS`). Every message tells the user what to do next. Front ends turn
these into replies in one place (the OSC server, the CLI's main); nothing else catches them. The command line exits with
:func:`exit_code` of the error's code (``musicgen-bridge send --wait`` too, for a ``/musicgen/fail``).
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge reports to a user."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadArgs(BridgeError):
    code = "bad_args"


class NotFound(BridgeError):
    code = "not_found"


class BadAudio(BridgeError):
    code = "bad_audio"


class Busy(BridgeError):
    code = "busy"


class Cancelled(BridgeError):
    code = "cancelled"


class ModelError(BridgeError):
    code = "model_error"


class Unauthorized(BridgeError):
    code = "unauthorized"


class NoAudioDevice(BridgeError):
    code = "no_audio_device"


class StorageError(BridgeError):
    """The disk, not the request: a folder that cannot be made or written, or no space left.

    The same request works again once the folder is back or space is freed, so clients may retry.
    """

    code = "storage"


class UnknownAddress(BridgeError):
    code = "unknown_address"


class Internal(BridgeError):
    code = "internal"


ERRORS: tuple[type[BridgeError], ...] = (BadArgs, NotFound, BadAudio, Busy, Cancelled, ModelError, Unauthorized,
                                          NoAudioDevice, StorageError, UnknownAddress, Internal)
"""One class per wire code."""

ALL_CODES = tuple(cls.code for cls in ERRORS)

EXIT_CODES = {"bad_args": 2, "not_found": 3, "bad_audio": 4, "busy": 5, "model_error": 6, "unauthorized": 7,
              "no_audio_device": 8, "storage": 9, "unknown_address": 10, "cancelled": 130, "internal": 1}
"""Wire code -> the command line's exit status (the README lists them)."""


def exit_code(code: str) -> int:
    """The exit status for a wire code; 1 for one this version does not know."""
    return EXIT_CODES.get(code, 1)


def error_for(code: str, message: str) -> BridgeError:
    """The error of wire code ``code`` (as a job journal recorded it) with ``message``; Internal for a code
    this version does not know."""
    for cls in ERRORS:
        if cls.code == code:
            return cls(message)
    return Internal(message)
