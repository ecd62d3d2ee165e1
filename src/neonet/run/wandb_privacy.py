"""What neonet sends to W&B: no case ids, file paths, host name or patient images unless the user opts in.

With ``WANDB_MODE=online`` (or ``wandb sync`` of the offline runs) everything a W&B run records leaves
the machine. By default it therefore holds no identifiers:

- **fit runs** (:class:`PrivateWandbLogger`, made by ``neonet.run.lightning_cli.make_loggers``): the
  hyperparameters Lightning logs go through :func:`redact` (the manifest, runs folder and checkpoint
  paths become :data:`REDACTED`), and the run starts with :func:`wandb_settings`: no host name, no
  command line, program path or working folder, no git remote;
- **cross-fold summary runs** (``neonet.report.wandb_summary.log_cv_summary``): tables go through
  :func:`redact_table` (case/patient id columns, file paths and per-case tumour volumes are left out;
  the per-case Dice rows stay), the same settings, and figures that show patients' images are left out.
- **what every run carries** (:mod:`neonet.run.wandb_run`): the resolved config goes through :func:`redact`,
  and so does the ``artifact.json`` a model artifact holds (file and metadata; its ``host`` too); a dataset
  artifact holds only its manifest's SHA-256.

One setting opts in: ``NEONET_WANDB_IDENTIFIERS=1`` (:data:`OPT_IN_ENV`) sends everything as recorded
locally. Local files (``reports/*.csv``/``json``, ``artifact.json``, ``metrics.csv``) always keep the
case ids and paths; only what goes to W&B changes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

#: The environment variable that opts in to sending case ids, paths, the host name and patient images to W&B.
OPT_IN_ENV = "NEONET_WANDB_IDENTIFIERS"
#: What a redacted value becomes in W&B.
REDACTED = "<not sent to W&B>"
#: Columns and keys that identify a case or patient.
IDENTIFIER_NAMES = ("case_id", "patient_id", "group", "source_case", "nearest_real", "case", "cases", "predict_cases", "host")
#: Name endings of identifier and path keys and columns.
IDENTIFIER_SUFFIXES = ("_id", "_ids", "_case", "_cases")
PATH_SUFFIXES = ("_dir", "_path", "_file", "_csv", "_checkpoint", "_config", "_manifest")
#: Per-case measurements left out of W&B tables (columns matching this pattern).
MEASUREMENTS = re.compile(r"^(tumou?r_ml|.*volume)", re.IGNORECASE)
_FILE_SUFFIXES = (".nii", ".nii.gz", ".csv", ".json", ".yaml", ".yml", ".ckpt", ".pt", ".pth", ".png", ".txt", ".dcm")


def identifiers_allowed() -> bool:
    """Whether the user opted in to identifiers in W&B (``NEONET_WANDB_IDENTIFIERS=1``)."""
    return os.environ.get(OPT_IN_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_path(value: Any) -> bool:
    """Whether a value is a file path (absolute, home- or dot-relative, or naming a data/checkpoint file).

    Metric names such as ``val/loss`` are not paths.
    """
    if isinstance(value, os.PathLike):
        return True
    if not isinstance(value, str) or not value:
        return False
    text = value.strip()
    if text.startswith(("/", "~", "./", "../", "\\\\")) or re.match(r"^[A-Za-z]:[\\/]", text):
        return True
    return text.lower().endswith(_FILE_SUFFIXES)


def _identifier_name(name: str) -> bool:
    low = name.lower()
    if low == "class_path":  # a dotted class name (monai.networks.nets.DynUNet), not a file
        return False
    return low in IDENTIFIER_NAMES or low.endswith(IDENTIFIER_SUFFIXES) or low.endswith(PATH_SUFFIXES) or low == "runs_dir"


def redact(value: Any, key: str = "") -> Any:
    """``value`` as W&B may receive it: identifier and path entries replaced by :data:`REDACTED`, recursively.

    Unchanged when the user opted in (:func:`identifiers_allowed`).

    Args:
        value: hyperparameters or any nested dict/list of plain values.
        key: the key ``value`` is stored under (an identifier or path key is redacted whatever its value).
    """
    if identifiers_allowed():
        return value
    return _redact(value, key)


def _redact(value: Any, key: str) -> Any:
    if key and _identifier_name(key) and value is not None:
        return REDACTED
    if isinstance(value, Mapping):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, "") for v in value]
    if isinstance(value, tuple):
        return tuple(_redact(v, "") for v in value)
    return REDACTED if looks_like_path(value) else value


def redact_table(frame: Any) -> Any:
    """A table (pandas DataFrame) as W&B may receive it: identifier, path and per-case measurement columns left out.

    Unchanged when the user opted in (:func:`identifiers_allowed`).
    """
    if identifiers_allowed():
        return frame
    drop = [
        c
        for c in frame.columns
        if _identifier_name(str(c))
        or MEASUREMENTS.match(str(c))
        or (frame[c].dtype.kind not in "biufcmM" and any(looks_like_path(v) for v in frame[c].dropna()))
    ]
    return frame.drop(columns=drop)


def wandb_settings() -> Any:
    """``wandb.Settings`` of every neonet W&B run: no host name, command line, program, folders or git
    metadata (W&B's defaults when the user opted in)."""
    import wandb

    if identifiers_allowed():
        return wandb.Settings()
    wanted: dict[str, Any] = {
        "x_disable_meta": True,  # command line, program path, working folder, executable, GPU and disk names
        "x_disable_machine_info": True,
        "disable_git": True,
        "save_code": False,
        "host": "hidden",  # W&B records the machine's name in the run otherwise
        "program": "neonet",
    }
    known = getattr(wandb.Settings, "model_fields", {})
    return wandb.Settings(**{k: v for k, v in wanted.items() if k in known})


class PrivateWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` with neonet's privacy rules: hyperparameters through :func:`redact`, the run
    started with :func:`wandb_settings`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("settings", wandb_settings())
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:  # W&B warns "The anonymous setting has no effect" for any value
            self._wandb_init.pop("anonymous", None)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Log the hyperparameters without identifiers or paths (unless opted in)."""
        plain = dict(params) if isinstance(params, Mapping) else dict(vars(params))
        super().log_hyperparams(redact(plain))
