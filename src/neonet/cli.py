"""The ``neonet`` command line.

``neonet fit|validate|test|predict --config ...`` is a :class:`lightning.pytorch.cli.LightningCLI`
in subclass mode (any stage's LightningModule and DataModule come from the config). The project
verbs (``synth``, ``check-data``, ``crop``, ``cv``, ...) are plain typed functions whose signatures
and docstrings jsonargparse turns into options and ``--help``.

Every fit knows its experiment, stage and fold, so the CLI puts its outputs into the fixed folder
``<runs_dir>/<experiment>/<stage>/fold<k>/`` (see :mod:`neonet.workspace`), adds the checkpoint
callback (``best.ckpt`` selected on the inner validation split, ``last.ckpt`` for resuming),
a CSV log and a W&B run (project ``neonet``, group = experiment, job_type = stage,
name = ``<stage>-fold<k>``), and writes ``artifact.json`` when the fit ends.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import typing
from collections.abc import Callable
from typing import Any

from neonet.errors import NeonetError

log = logging.getLogger("neonet")

#: Project verbs: name → ("module:function", one-line help).
PROJECT_VERBS: dict[str, tuple[str, str]] = {
    "synth": ("neonet.data.phantom:synth", "write a phantom cohort (cases.csv + NIfTI) for tests and the demo"),
    "check-data": ("neonet.data.validate:check_data", "validate a case manifest and all its files; report every problem"),
    "cv": ("neonet.cv:cv_main", "run a stage over the folds (each fold its own process), then its cross-fold summary"),
    "crop": ("neonet.seg.crop:crop", "TLCR: tumour-centred image and label patches + manifest.csv"),
    "synthesize": ("neonet.gen.synthesize:synthesize", "NeoGen: PNI+ patches from each fold's ControlNet until its training set is balanced"),
    "gen-quality": ("neonet.gen.quality:gen_quality", "NeoGen: recompute the synthetic-patch quality report (synthesize writes it too)"),
    "report": ("neonet.report:report_main", "NeoCls cross-validation report: per-fold and pooled AUC with CI, DeLong, ROC"),
    "summary": ("neonet.summary:summary", "print and save where an experiment's results are, with its metrics"),
    "predict-case": ("neonet.predict_case:predict_case_main", "PNI for one new MRI: NeoSeg -> TLCR -> classifier folds, Grad-CAM, JSON + NIfTI + PNG"),
}

LIGHTNING_VERBS: dict[str, str] = {
    "fit": "train one stage for one fold (python -m neonet fit --config experiments/...)",
    "validate": "evaluate a checkpoint on the fold's inner validation split",
    "test": "evaluate a checkpoint on the fold's held-out test cases",
    "predict": "run a checkpoint on the fold's test cases and write its outputs (e.g. NeoSeg masks)",
}


def _load_verb(spec: str) -> Callable[..., Any]:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def _print_help() -> None:
    lines = [
        "usage: neonet <verb> [options]   (neonet <verb> --help for the options of a verb)",
        "",
        "NeoNet: perineural invasion from 3D MRI — NeoSeg, TLCR, NeoGen, NeoCls under k-fold CV.",
        "",
        "Lightning verbs (one stage, one fold; the stage comes from the config):",
    ]
    lines += [f"  {name:<11} {text}" for name, text in LIGHTNING_VERBS.items()]
    lines += ["", "Project verbs:"]
    lines += [f"  {name:<11} {text}" for name, (_, text) in PROJECT_VERBS.items()]
    lines += [
        "",
        "Example:  neonet synth --out data/phantom && neonet cv --config experiments/demo/seg.yaml",
    ]
    print("\n".join(lines))


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("NEONET_LOG_LEVEL", "INFO"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )


def _underscore_options(args: list[str]) -> list[str]:
    """Accept ``--pni-fraction`` as well as ``--pni_fraction`` (option names only, not values)."""
    out = []
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        out.append(arg)
    return out


def _bare_bool_flags(func: Any, args: list[str]) -> list[str]:
    """Let a bare ``--force`` mean ``--force=true`` for the verb's boolean parameters."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable annotations: leave the arguments alone
        return args
    flags = {f"--{name}" for name, hint in hints.items() if hint is bool}
    out = []
    for i, arg in enumerate(args):
        bare = arg in flags and (i + 1 == len(args) or args[i + 1].startswith("--"))
        out.append(f"{arg}=true" if bare else arg)
    return out


def run_project_verb(verb: str, args: list[str]) -> int:
    """Run a project verb with jsonargparse; return its exit code."""
    from jsonargparse import auto_cli

    if "--" in args:  # options after `--` belong to another program (e.g. cv's folds)
        i = args.index("--")
        args = _underscore_options(args[:i]) + args[i:]
    else:
        args = _underscore_options(args)
    func = _load_verb(PROJECT_VERBS[verb][0])
    if func.__name__.endswith("_main"):  # verbs with their own argument parsing take argv
        return int(func(args) or 0)
    result = auto_cli(func, args=_bare_bool_flags(func, args), as_positional=False, prog=f"neonet {verb}")
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def run_lightning(args: list[str]) -> int:
    """Run a Lightning verb through :class:`neonet.lightning_cli.NeonetCLI`."""
    from neonet.lightning_cli import NeonetCLI

    # LightningCLI reads sys.argv itself when we were called from the command line
    NeonetCLI(args=None if args == sys.argv[1:] else args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``neonet`` and ``python -m neonet``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help()
        return 0
    if argv[0] in ("-V", "--version"):
        from neonet import __version__

        print(f"neonet {__version__}")
        return 0
    verb = argv[0]
    try:
        if verb in PROJECT_VERBS:
            return run_project_verb(verb, argv[1:])
        if verb in LIGHTNING_VERBS:
            return run_lightning(argv)
    except NeonetError as exc:
        print(f"neonet {verb}: error: {exc}", file=sys.stderr)
        return 2
    print(f"neonet: unknown verb {verb!r}\n", file=sys.stderr)
    _print_help()
    return 2
