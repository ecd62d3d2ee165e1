"""Exceptions that carry a message meant for the user (printed without a traceback)."""

from __future__ import annotations


class NeonetError(RuntimeError):
    """An error whose message says what went wrong and what to do next."""


class DataError(NeonetError):
    """Input data (a manifest, a NIfTI file, a label map) is invalid."""


class MissingUpstreamError(NeonetError):
    """A stage needs the output of an earlier stage that does not exist yet."""

    def __init__(self, what: str, path: object, command: str) -> None:
        super().__init__(f"{what} not found at {path}. Run this first:\n    {command}")
        self.path = path
        self.command = command


class SplitMismatchError(NeonetError):
    """The case manifest no longer matches the experiment's split file."""
