"""Is this output current? One provenance record beside every output that a later run may reuse.

A record (:class:`Provenance`) says what an output was made from: the command's **settings** (plain
JSON values) and its **inputs** (named files, each with its path and SHA-256), and optionally the
**outputs** it vouches for (so a reader notices a file changed after it was recorded). It is written
as JSON beside the output (atomically)::

    {"provenance": 1, <informational fields>, "settings": {...},
     "inputs": {"<name>": {"path": "...", "sha256": "..."}}, "outputs": {...}}

A verb builds the record of what it would make *now* and compares it with the stored one
(:func:`differences`): every differing setting, changed input or altered output becomes one readable
line, e.g. ``setting spacing: [1.0, 1.0, 2.0] (stored) -> [1.5, 1.5, 4.0] (now)`` or ``input
controlnet checkpoint runs/x/controlnet/fold0/checkpoints/best.ckpt changed (sha256 ab12… -> cd34…)``.
An input counts as the same file when its content is (its path may have moved). An output that is
not current is :class:`OutOfDateError`, one message format with one remedy (``--force``) for every
verb; a record that cannot be read is :class:`UnreadableRecordError`, with the same remedy.

Records written before a key existed stay readable: ``defaults`` give the value such a record stands
for (or :data:`UNRECORDED`: any value now is accepted), and a verb may read its files of an older
format through a ``legacy`` converter.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neonet.errors import NeonetError
from neonet.run.atomic import sha256_file, write_json

log = logging.getLogger(__name__)

#: Version of the record format; a record without the ``provenance`` key is of an older format.
FORMAT = 1
_RESERVED = ("provenance", "settings", "inputs", "outputs")
#: Shown for a setting that one side lacks.
MISSING = "<missing>"
#: The remedy every out-of-date output shares.
REMEDY = "Re-run with --force to replace {it} (or write to another {experiment})"


class _Unrecorded:
    """The default of a key that older records lack and whose value then is unknown: anything matches."""

    def __repr__(self) -> str:
        return "UNRECORDED"


#: ``defaults`` value: records without this setting or input are current whatever the command has now.
UNRECORDED: Any = _Unrecorded()


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data (tuples become lists, paths and numpy scalars their JSON form)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        if hasattr(obj, "tolist"):
            return obj.tolist()
        if hasattr(obj, "item"):
            return obj.item()
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

    return json.loads(json.dumps(value, default=default))


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class FileRecord:
    """A file by path and content: ``{"path", "sha256"}``.

    Attributes:
        path: the file's path as the command named it.
        sha256: hex SHA-256 of its bytes.
    """

    path: str
    sha256: str

    @classmethod
    def of(cls, path: str | os.PathLike) -> FileRecord:
        """The record of an existing file (hashes it)."""
        return cls(os.fspath(path), sha256_file(path))

    def to_json(self) -> dict[str, str]:
        """``{"path", "sha256"}``."""
        return {"path": self.path, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Any) -> FileRecord:
        """Parse ``{"path", "sha256"}``; ValueError for anything else."""
        if not isinstance(data, Mapping) or not isinstance(data.get("sha256"), str):
            raise ValueError(f"not a file record (path and sha256): {data!r}")
        return cls(str(data.get("path", "")), data["sha256"])


@dataclass(frozen=True)
class Provenance:
    """What an output was made from.

    Attributes:
        settings: the settings that change the output (JSON values; tuples are stored as lists).
        inputs: the files it was made from, by name (e.g. ``autoencoder checkpoint``).
        outputs: files of the output whose content the record vouches for (e.g. a cache file).
        extra: informational fields written into the record and never compared (sizes, dates...).
    """

    settings: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, FileRecord] = field(default_factory=dict)
    outputs: Mapping[str, FileRecord] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", _plain(dict(self.settings)))
        clash = set(self.extra) & set(_RESERVED)
        if clash:
            raise ValueError(f"extra fields may not be named {sorted(clash)}")

    def to_json(self) -> dict[str, Any]:
        """The record as written: format version, informational fields, settings, inputs, outputs."""
        data: dict[str, Any] = {
            "provenance": FORMAT,
            **_plain(dict(self.extra)),
            "settings": dict(self.settings),
            "inputs": {name: rec.to_json() for name, rec in self.inputs.items()},
        }
        if self.outputs:
            data["outputs"] = {name: rec.to_json() for name, rec in self.outputs.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Provenance:
        """Parse a record of the current format; ValueError when it is not one."""
        version = data.get("provenance")
        if version != FORMAT:
            raise ValueError(f"record format {version!r} (this neonet reads format {FORMAT})")
        settings, inputs, outputs = data.get("settings", {}), data.get("inputs", {}), data.get("outputs", {})
        if not all(isinstance(part, Mapping) for part in (settings, inputs, outputs)):
            raise ValueError("settings, inputs and outputs must be JSON objects")
        return cls(
            settings=dict(settings),
            inputs={str(k): FileRecord.from_json(v) for k, v in inputs.items()},
            outputs={str(k): FileRecord.from_json(v) for k, v in outputs.items()},
            extra={k: v for k, v in data.items() if k not in _RESERVED},
        )

    def write(self, path: str | os.PathLike, only_if_changed: bool = False) -> bool:
        """Write the record atomically to ``path``.

        Args:
            path: the record file.
            only_if_changed: leave the file alone when it already holds exactly this record.

        Returns:
            Whether the file was written.
        """
        data = self.to_json()
        if only_if_changed and Path(path).is_file():
            try:
                if json.loads(Path(path).read_text()) == data:
                    return False
            except (OSError, ValueError):
                pass  # unreadable: replaced below
        write_json(path, data)
        return True

    def differences(
        self, now: Provenance, defaults: Mapping[str, Any] | None = None, only: Collection[str] | None = None
    ) -> list[str]:
        """What differs between this (stored) record and ``now``; see :func:`differences`."""
        return differences(self, now, defaults, only)


# ----------------------------------------------------------------------------- comparison
_MISSING_VALUE = object()


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def setting_difference(key: str, stored: Any, now: Any) -> str:
    """``setting <key>: <stored> (stored) -> <now> (now)`` (``<missing>`` for a side without it)."""
    old = MISSING if stored is _MISSING_VALUE else _short(stored)
    new = MISSING if now is _MISSING_VALUE else _short(now)
    return f"setting {key}: {old} (stored) -> {new} (now)"


def _setting_differences(key: str, stored: Any, now: Any) -> list[str]:
    """Differences of one setting, descending into JSON objects (``mask_augmentation.degrees``)."""
    if stored == now:
        return []
    if isinstance(stored, Mapping) and isinstance(now, Mapping) and stored and now:
        out = []
        for sub in list(stored) + [k for k in now if k not in stored]:
            out += _setting_differences(f"{key}.{sub}", stored.get(sub, _MISSING_VALUE), now.get(sub, _MISSING_VALUE))
        return out
    return [setting_difference(key, stored, now)]


def _sha(digest: str) -> str:
    return f"{digest[:12]}…"


def differences(
    stored: Provenance, now: Provenance, defaults: Mapping[str, Any] | None = None, only: Collection[str] | None = None
) -> list[str]:
    """Everything of ``stored`` that ``now`` (the record the command would write) does not have.

    Args:
        stored: the record beside the output.
        now: the record of what the command would make now.
        defaults: what a record written before a setting or input existed stands for: the setting's
            value then, or :data:`UNRECORDED` (any value now matches).
        only: compare only these settings (a reader that knows some of the writer's settings, e.g. a
            stage reading a cache); None compares every setting either record has.

    Returns:
        One readable line per difference (empty when the output is current): a changed, added or
        removed setting; an input whose content changed, that is new, or that is gone; an output
        file of ``stored`` whose content is not the recorded one.
    """
    defaults = defaults or {}
    out: list[str] = []
    keys = list(stored.settings) + [k for k in now.settings if k not in stored.settings]
    for key in keys:
        if only is not None and key not in only:
            continue
        old = stored.settings.get(key, defaults.get(key, _MISSING_VALUE))
        new = now.settings.get(key, _MISSING_VALUE)
        if old is UNRECORDED:
            continue
        out += _setting_differences(key, _plain(old) if old is not _MISSING_VALUE else old, new)
    for name in list(stored.inputs) + [n for n in now.inputs if n not in stored.inputs]:
        old_file, new_file = stored.inputs.get(name), now.inputs.get(name)
        if old_file is None:
            default = defaults.get(name)
            if default is UNRECORDED:
                continue
            old_file = default if isinstance(default, FileRecord) else None
        if new_file is None:
            assert old_file is not None
            out.append(f"input {name} {old_file.path} is no longer used")
        elif old_file is None:
            out.append(f"input {name} {new_file.path} is new")
        elif old_file.sha256 != new_file.sha256:
            out.append(f"input {name} {new_file.path} changed (sha256 {_sha(old_file.sha256)} -> {_sha(new_file.sha256)})")
    for name, old_file in stored.outputs.items():
        new_file = now.outputs.get(name)
        if new_file is not None and new_file.sha256 != old_file.sha256:
            out.append(
                f"output {name} {new_file.path} changed after it was recorded "
                f"(sha256 {_sha(old_file.sha256)} -> {_sha(new_file.sha256)})"
            )
    return out


# ----------------------------------------------------------------------------- errors
def remedy(count: int = 1, command: str | None = None, way_on: str | None = None, experiment_option: str = "--experiment") -> str:
    """The one remedy of out-of-date outputs, with the command to re-run and a verb's other way on.

    Args:
        count: how many outputs are out of date ("it" or "them").
        command: the command that replaces the output, when it is not the one that was run.
        way_on: a verb's own further way on (e.g. a new classifier stage name).
        experiment_option: how the verb names another experiment.
    """
    text = REMEDY.format(it="it" if count == 1 else "them", experiment=experiment_option)
    text += f":\n    {command}" if command else "."
    return text + (f"\n{way_on}" if way_on else "")


def _shown(path: str | os.PathLike) -> str:
    """``path`` relative to the current folder when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return os.fspath(path)


@dataclass(frozen=True)
class Outdated:
    """One output that is not current: what it is, where, and its differences."""

    what: str
    path: str | os.PathLike
    differences: Sequence[str]

    def sentence(self) -> str:
        """``<what> at <path> was made from other settings or inputs than this command's: <differences>.``"""
        return (
            f"{self.what} at {_shown(self.path)} was made from other settings or inputs than this command's: "
            f"{'; '.join(self.differences)}."
        )


class OutOfDateError(NeonetError):
    """An output was made from other settings or inputs than the command's; ``--force`` replaces it.

    Args:
        outdated: each output that is not current.
        command: the command that replaces them, when it is not the one that was run.
        way_on: a verb's further way on, appended to the remedy.
        experiment_option: how the verb names another experiment.
    """

    def __init__(
        self, *outdated: Outdated, command: str | None = None, way_on: str | None = None, experiment_option: str = "--experiment"
    ) -> None:
        self.outdated = outdated
        lines = [o.sentence() for o in outdated]
        super().__init__("\n".join([*lines, remedy(len(outdated), command, way_on, experiment_option)]))


class UnreadableRecordError(NeonetError):
    """A provenance record is truncated or corrupt, so whether its output is current cannot be told.

    Args:
        path: the record file.
        what: the output it describes.
        cause: what is wrong with the file.
        command: the command that replaces the output, when it is not the one that was run.
        way_on: a verb's further way on, appended to the remedy.
        experiment_option: how the verb names another experiment.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        what: str,
        cause: str,
        command: str | None = None,
        way_on: str | None = None,
        experiment_option: str = "--experiment",
    ) -> None:
        self.path = Path(path)
        super().__init__(
            f"{_shown(path)}: unreadable record of {what} ({cause}), so whether it is current "
            f"cannot be told. {remedy(1, command, way_on, experiment_option)}"
        )


# ----------------------------------------------------------------------------- reading
def read_provenance(
    path: str | os.PathLike, what: str, legacy: Callable[[dict[str, Any]], Provenance] | None = None, command: str | None = None
) -> Provenance | None:
    """The record at ``path``; None when there is none.

    Args:
        path: the record file.
        what: the output it describes (for the error message).
        legacy: converts a record of an older format (a JSON object without ``provenance``).
        command: the command that replaces the output (for the error message).

    Raises:
        UnreadableRecordError: the file is truncated, not JSON, or not a record.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if "provenance" not in data and legacy is not None:
            return legacy(data)
        return Provenance.from_json(data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        cause = "truncated or not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc) or type(exc).__name__
        raise UnreadableRecordError(path, what, cause, command) from exc


def check_current(
    path: str | os.PathLike,
    now: Provenance,
    what: str,
    output: str | os.PathLike | None = None,
    legacy: Callable[[dict[str, Any]], Provenance] | None = None,
    defaults: Mapping[str, Any] | None = None,
    only: Collection[str] | None = None,
    command: str | None = None,
    way_on: str | None = None,
) -> Provenance | None:
    """The stored record at ``path`` after checking that it matches ``now``; None when there is none.

    Args:
        path: the record file.
        now: the record of what the command would make now.
        what: the output (``the latent cache of fold 0``).
        output: the output's path as named in the message (default: the record's).
        legacy: converts a record of an older format.
        defaults: see :func:`differences`.
        only: see :func:`differences`.
        command: the command that replaces the output, when it is not the one that was run.
        way_on: a verb's further way on.

    Raises:
        OutOfDateError: the output was made from other settings or inputs.
        UnreadableRecordError: the record cannot be read.
    """
    stored = read_provenance(path, what, legacy, command)
    if stored is not None:
        ensure_current(stored, now, what, output if output is not None else path, defaults, only, command, way_on)
    return stored


def ensure_current(
    stored: Provenance,
    now: Provenance,
    what: str,
    output: str | os.PathLike,
    defaults: Mapping[str, Any] | None = None,
    only: Collection[str] | None = None,
    command: str | None = None,
    way_on: str | None = None,
) -> None:
    """Raise :class:`OutOfDateError` when ``stored`` differs from ``now`` (arguments as :func:`check_current`)."""
    found = differences(stored, now, defaults, only)
    if found:
        raise OutOfDateError(Outdated(what, output, found), command=command, way_on=way_on)
