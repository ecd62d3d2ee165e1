"""The ``neonet`` command line: one dispatcher, one parser (jsonargparse) for every verb.

``neonet fit|validate|test|predict --config ...`` is :class:`neonet.run.lightning_cli.NeonetCLI`, a
LightningCLI in subclass mode (any stage's LightningModule and DataModule come from the config).
The project verbs (``synth``, ``check-data``, ``cv``, ``crop``, ...) are plain typed functions:
jsonargparse builds their options and ``--help`` from the signature and docstring, and every verb
takes ``--config FILE`` (a YAML of its options; for ``cv``, the stage configs) and
``--print_config``.

Conveniences, the same for every project verb: ``--pni-fraction`` is ``--pni_fraction``; a bare
boolean flag (``--force``) is ``--force=true``; a list option takes several values
(``--folds 0 1`` is ``--folds [0,1]``) or repeats (``--config a.yaml --config b.yaml``), and a list of
numbers may also be written ``48,48,16``, ``48 48 16``, ``(48,48,16)`` or ``[48,48,16]`` (so may a
list of numbers given to a Lightning verb or after ``--``: ``--data.patch_size 32,32,16``); a verb with
a ``positional`` parameter takes it first without its option name (``neonet predict-case scan.nii.gz``);
a verb with an ``override`` parameter takes the options after ``--`` (``neonet cv ... -- --trainer.max_epochs=5``).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from neonet.errors import NeonetError
from neonet.run.console import did_you_mean, route_lightning_logging, setup_logging

log = logging.getLogger("neonet")


@dataclass(frozen=True)
class Verb:
    """A project verb: the function that runs it and its one-line help.

    Attributes:
        target: ``module:function``; the function's typed signature and Google docstring are the options.
        help: the line shown by ``neonet --help``.
        positional: a parameter that may be given first without its option name.
    """

    target: str
    help: str
    positional: str | None = None

    def load(self) -> Callable[..., Any]:
        """Import the verb's function."""
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


#: Project verbs, in the order ``neonet --help`` lists them.
PROJECT_VERBS: dict[str, Verb] = {
    "synth": Verb("neonet.data.phantom:synth", "write a phantom cohort (cases.csv + NIfTI) for tests and the demo"),
    "check-data": Verb("neonet.data.validate:check_data", "validate a case manifest and all its files; report every problem"),
    "plan": Verb(
        "neonet.data.plans:plan", "fingerprint a cohort; suggest target spacing, NeoSeg and TLCR patch sizes (plans.json)"
    ),
    "cv": Verb("neonet.run.cv:cv", "run a stage over the folds (each fold its own process), then its cross-fold summary"),
    "crop": Verb("neonet.seg.crop:crop", "TLCR: tumour-centred image and label patches + manifest.csv"),
    "synthesize": Verb(
        "neonet.gen.synthesize:synthesize", "NeoGen: PNI+ patches from each fold's ControlNet until its training set is balanced"
    ),
    "gen-quality": Verb(
        "neonet.gen.quality:gen_quality", "NeoGen: recompute the synthetic-patch quality report (synthesize writes it too)"
    ),
    "radiomics": Verb(
        "neonet.radiomics.run:radiomics",
        "radiomics baseline: IBSI tumour + shell features, L2 logistic regression per fold (C on inner validation)",
    ),
    "report": Verb(
        "neonet.report.cls_report:report", "NeoCls cross-validation report: per-fold and pooled AUC with CI, DeLong, ROC"
    ),
    "summary": Verb("neonet.report.summary:summary", "print and save where an experiment's results are, with its metrics"),
    "predict-case": Verb(
        "neonet.predict.case:predict_case",
        "PNI for one new MRI: NeoSeg -> TLCR -> classifier folds, Grad-CAM, JSON + NIfTI + PNG",
        positional="image",
    ),
    "evaluate": Verb(
        "neonet.report.external:evaluate",
        "the folds' ensembles on an external cohort: NeoSeg Dice/HD95/NSD, PNI AUC [CI], sens/spec, calibration, ROC",
    ),
    "export": Verb(
        "neonet.predict.export:export",
        "write an experiment's NeoSeg + classifier fold ensembles as a bundle (MONAI layout, TorchScript)",
    ),
}

LIGHTNING_VERBS: dict[str, str] = {
    "fit": "train one stage for one fold (python -m neonet fit --config experiments/...)",
    "validate": "evaluate a checkpoint on the fold's inner validation split",
    "test": "evaluate a checkpoint on the fold's held-out test cases",
    "predict": "run a checkpoint on the fold's test cases and write its outputs (e.g. NeoSeg masks)",
}


def _print_help() -> None:
    lines = [
        "usage: neonet <verb> [options]   (neonet <verb> --help for the options of a verb)",
        "",
        "NeoNet: perineural invasion from 3D MRI — NeoSeg, TLCR, NeoGen, NeoCls under k-fold CV.",
        "",
        "Lightning verbs (one stage, one fold; the stage comes from the config):",
    ]
    lines += [f"  {name:<12} {text}" for name, text in LIGHTNING_VERBS.items()]
    lines += ["", "Project verbs:"]
    lines += [f"  {name:<12} {verb.help}" for name, verb in PROJECT_VERBS.items()]
    lines += ["", "Example:  neonet synth --out data/phantom && neonet cv --config experiments/demo/seg.yaml"]
    print("\n".join(lines))


# ---------------------------------------------------------------------------- argument conveniences
def _underscore_options(args: list[str]) -> list[str]:
    """Accept ``--pni-fraction`` as well as ``--pni_fraction`` (option names only, not values)."""
    out = []
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        out.append(arg)
    return out


def _hints(func: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no conveniences
        return {}


def _bare_bool_flags(func: Any, args: list[str]) -> list[str]:
    """Let a bare ``--force`` mean ``--force=true`` for the verb's boolean parameters."""
    flags = {f"--{name}" for name, hint in _hints(func).items() if hint is bool}
    out = []
    for i, arg in enumerate(args):
        bare = arg in flags and (i + 1 == len(args) or args[i + 1].startswith("--"))
        out.append(f"{arg}=true" if bare else arg)
    return out


def _is_list(hint: Any) -> bool:
    """Whether an annotation is a list/tuple, or a union with one (``list[int] | None``)."""
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return True
    return origin in (typing.Union, types.UnionType) and any(_is_list(h) for h in typing.get_args(hint))


def _item_types(hint: Any) -> set[Any]:
    """The element types of a list/tuple annotation (through unions; ``Ellipsis`` left out)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return {t for h in typing.get_args(hint) for t in _item_types(h)}
    if origin in (list, tuple):
        return {t for t in typing.get_args(hint) if t is not Ellipsis}
    return set()


def _is_number_list(hint: Any) -> bool:
    """Whether an annotation is a list/tuple of numbers only (``tuple[int, int, int]``, ``list[float] | None``)."""
    items = _item_types(hint)
    return bool(items) and items <= {int, float}


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _number_list(values: list[str]) -> str | None:
    """``48,48,16``, ``48 48 16``, ``(48, 48, 16)``, ``[48,48,16]`` or the tokens ``48`` ``48`` ``16`` → ``[48,48,16]``.

    None unless every item is a number and there are several of them or brackets around them (a
    single plain number stays a number).
    """
    text = " ".join(values).strip()
    bracketed = len(text) >= 2 and text[0] in "([" and text[-1] in ")]"
    items = [t for t in re.split(r"[\s,]+", text[1:-1] if bracketed else text) if t]
    if not items or not all(_NUMBER.fullmatch(t) for t in items) or (len(items) < 2 and not bracketed):
        return None
    return "[" + ",".join(items) + "]"


def _list_values(func: Any, args: list[str]) -> list[str]:
    """``--folds 0 1`` → ``--folds [0,1]``; a repeated list option collects every value; ``--folds [0,1]`` stays.

    A list of numbers also takes ``48,48,16``, ``48 48 16`` (one argument or three), ``48, 48, 16``
    and ``(48,48,16)``.
    """
    hints = _hints(func)
    lists = {f"--{name}" for name, hint in hints.items() if _is_list(hint)}
    numbers = {f"--{name}" for name, hint in hints.items() if _is_number_list(hint)}
    values: dict[str, list[str]] = {}
    order: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, sep, inline = arg.partition("=")
        if name in lists:
            given = [inline] if sep else []
            i += 1
            while not sep and i < len(args) and not args[i].startswith("--"):
                given.append(args[i])
                i += 1
            if name not in values:
                order.append(name)
                rest.append(name)  # placeholder where the option first stood
            values.setdefault(name, []).extend(given)
            continue
        rest.append(arg)
        i += 1
    out = []
    for arg in rest:
        if arg in values and arg in order:
            given = values[arg]
            as_numbers = _number_list(given) if arg in numbers else None
            if as_numbers is not None:
                out += [arg, as_numbers]
            elif len(given) == 1 and given[0].lstrip().startswith(("[", "null", "None")):
                out += [arg, given[0]]
            else:
                out += [arg, "[" + ",".join(given) + "]"]
            order.remove(arg)
        else:
            out.append(arg)
    return out


def verb_parser(verb: str, func: Callable[..., Any]) -> Any:
    """The jsonargparse parser of a project verb, from its typed signature and docstring."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from neonet.run.console import SuggestingParser

    class VerbParser(SuggestingParser, ArgumentParser):
        default_prog = f"neonet {verb}"

    doc = inspect.getdoc(func) or ""
    parser = VerbParser(description=doc.split("\n\nArgs:")[0], default_env=False)
    if "config" not in inspect.signature(func).parameters:  # cv's --config is its stage configs
        parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of this verb's options")
    parser.add_function_arguments(func, as_positional=False, skip={"override"}, fail_untyped=True)
    return parser


def run_project_verb(verb: str, args: list[str]) -> int:
    """Run a project verb: parse ``args`` with its jsonargparse parser and call it; return its exit code."""
    spec = PROJECT_VERBS[verb]
    func = spec.load()
    route_lightning_logging()  # the verb's modules may have imported Lightning
    params = inspect.signature(func).parameters
    extra: list[str] | None = None
    if "--" in args:  # options after `--` belong to the folds' `neonet fit` (cv)
        i = args.index("--")
        args, extra = args[:i], args[i + 1 :]
        if "override" not in params:
            raise NeonetError(f"`neonet {verb}` takes no options after `--`")
    if spec.positional and args and not args[0].startswith("-"):
        args = [f"--{spec.positional}", args[0], *args[1:]]
    args = _list_values(func, _bare_bool_flags(func, _underscore_options(args)))
    parser = verb_parser(verb, func)
    cfg = parser.parse_args(args)
    kwargs = {k: v for k, v in parser.instantiate_classes(cfg).as_dict().items() if k in params}
    if extra is not None:
        kwargs["override"] = normalise_overrides(extra)
    result = func(**kwargs)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def normalise_overrides(extra: list[str]) -> list[str]:
    """``--a.b value`` and ``--a.b=value`` → ``--a.b=value`` (the form every fold's ``neonet fit`` gets).

    A bare ``--a.b`` is ``--a.b=true``; a list of numbers (``--a.b 48 48 16``, ``--a.b=48,48,16``,
    ``(48,48,16)``) becomes ``--a.b=[48,48,16]``.
    """
    out: list[str] = []
    i = 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--"):
            raise NeonetError(f"unexpected argument {item!r} after `--`: use --key=value")
        key, sep, value = item.partition("=")
        given = [value] if sep else []
        i += 1
        while not sep and i < len(extra) and not extra[i].startswith("--"):
            given.append(extra[i])
            i += 1
        if not given:
            out.append(f"{key}=true")
        elif (as_numbers := _number_list(given)) is not None:
            out.append(f"{key}={as_numbers}")
        elif len(given) == 1:
            out.append(f"{key}={given[0]}")
        else:
            raise NeonetError(
                f"`{key}` after `--` got {len(given)} values ({' '.join(given)}): give one value, or a list as {key}=[a,b]"
            )
    return out


def _lightning_number_lists(args: list[str]) -> list[str]:
    """For a Lightning verb: ``--data.patch_size 32,32,16`` (or ``32 32 16``, ``(32,32,16)``) → ``--data.patch_size=[32,32,16]``.

    Only lists of numbers are rewritten; every other argument is passed on as given.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        item = args[i]
        i += 1
        if not item.startswith("--"):
            out.append(item)
            continue
        key, sep, value = item.partition("=")
        given = [value] if sep else []
        j = i
        while not sep and j < len(args) and not args[j].startswith("--"):
            given.append(args[j])
            j += 1
        as_numbers = _number_list(given) if given and not given[0].lstrip().startswith("[") else None
        if as_numbers is None:
            out.append(item)
            continue
        out.append(f"{key}={as_numbers}")
        i = j
    return out


def run_lightning(args: list[str]) -> int:
    """Run a Lightning verb through :class:`neonet.run.lightning_cli.NeonetCLI`."""
    import warnings

    from neonet.run.lightning_cli import NeonetCLI

    given = _lightning_number_lists(args)
    # LightningCLI reads sys.argv itself (and warns about a given list) when we were called from the command line
    if args == sys.argv[1:] and given == args:
        NeonetCLI(args=None)
        return 0
    with warnings.catch_warnings():  # a list of numbers rewritten: this list replaces the command line
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter")
        NeonetCLI(args=given)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``neonet`` and ``python -m neonet``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
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
    hint = did_you_mean(verb, [*LIGHTNING_VERBS, *PROJECT_VERBS])
    print(f"neonet: unknown verb '{verb}'{hint}\n(`neonet --help` lists the verbs)", file=sys.stderr)
    return 2
