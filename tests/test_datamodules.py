"""One DataModule contract: every stage's DataModule states only what it adds to :class:`FoldDataModule`.

The cohort and fold parameters live in ``FoldDataModule.__init__`` alone; subclasses take them as
``**kwargs`` and pass them on. jsonargparse follows ``**kwargs`` into the base signature, so each
subclass's ``--data.help`` (and its config files) must still offer and document every option.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import docstring_parser
import pytest
import yaml

import neonet.cls
import neonet.gen
import neonet.seg  # noqa: F401 - defines the stage DataModules listed below
from neonet.data.base import FoldDataModule
from neonet.run.cli import main

REPO = Path(__file__).resolve().parents[1]


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("neonet."):
            out.append(sub)
        out += _subclasses(sub)
    return sorted(set(out), key=lambda c: f"{c.__module__}.{c.__qualname__}")


SUBCLASSES = _subclasses(FoldDataModule)


def _params(cls: type) -> dict[str, inspect.Parameter]:
    """Named parameters of ``cls.__init__`` (no self, *args or **kwargs)."""
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {n: p for n, p in list(inspect.signature(cls.__init__).parameters.items())[1:] if p.kind not in kinds}


def _documented(cls: type) -> dict[str, str]:
    """``Args:`` entries of the class docstring: name -> description."""
    return {p.arg_name: p.description or "" for p in docstring_parser.parse(cls.__doc__ or "").params}


BASE = _params(FoldDataModule)
BASE_DOCS = _documented(FoldDataModule)


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_every_stage_datamodule_is_checked() -> None:
    names = {c.__name__ for c in SUBCLASSES}
    assert {"SegDataModule", "ClsDataModule", "PatchDataModule", "LatentDataModule"} <= names
    assert set(BASE) == set(BASE_DOCS), "FoldDataModule documents exactly its parameters"


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_subclass_states_only_what_it_adds(cls: type) -> None:
    sig = inspect.signature(cls.__init__).parameters.values()
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig), f"{cls.__name__} must take **kwargs"
    own = _params(cls)
    assert not set(own) & set(BASE), f"{cls.__name__} restates base parameters {sorted(set(own) & set(BASE))}"
    positional = [n for n, p in own.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert not positional, f"{cls.__name__}: own parameters must be keyword-only (after `*`): {positional}"
    docs = _documented(cls)
    assert not set(docs) & set(BASE), f"{cls.__name__} re-documents base parameters {sorted(set(docs) & set(BASE))}"
    assert set(own) <= set(docs), f"{cls.__name__}: undocumented parameters {sorted(set(own) - set(docs))}"
    source = inspect.getsource(cls.__init__)
    assert "super().__init__(**kwargs)" in source
    assert "save_hyperparameters(" not in source, "FoldDataModule records the hyperparameters (a second call drops defaults)"


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_help_lists_and_documents_every_option(cls: type, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--data.help", _path(cls)])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    flat = "".join(out.split())  # help text is wrapped (also at hyphens)
    docs = {**BASE_DOCS, **_documented(cls)}
    for name in [*BASE, *_params(cls)]:
        assert f"--data.{name} " in out or f"--data.{name}\n" in out, f"{cls.__name__} --data.help lacks --data.{name}"
        assert "".join(docs[name].split()) in flat, f"{cls.__name__} --data.help lacks the help of {name}"


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_hyperparameters_record_every_argument(cls: type) -> None:
    dm = cls(cases="cases.csv", fold=1)
    expected = {n: p.default for n, p in {**BASE, **_params(cls)}.items()}
    expected.update(cases="cases.csv", fold=1)
    assert dict(dm.hparams) == expected
    assert list(dm.hparams)[: len(BASE)] == list(BASE), "base parameters first, as before"


@pytest.mark.parametrize("conf", ["seg", "baseline", "autoencoder", "diffusion"])
def test_a_fold_config_saved_before_still_parses(conf: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fold's ``config.yaml`` from before: every base parameter first; the patch and latent ones had no label map."""

    def printed(path: Path) -> dict:
        with pytest.raises(SystemExit) as exc:
            main(["fit", "--config", str(path), "--print_config"])
        assert exc.value.code == 0
        return yaml.safe_load(capsys.readouterr().out)

    now = printed(REPO / "tests" / "conf" / f"{conf}.yaml")
    old = dict(now)
    args = now["data"]["init_args"]
    without_labels = conf in ("autoencoder", "diffusion")
    base = {k: args[k] for k in BASE if not (without_labels and k in ("liver", "tumor", "other"))}
    old["data"] = {
        "class_path": now["data"]["class_path"],
        "init_args": {**base, **{k: v for k, v in args.items() if k not in BASE}},
    }
    stored = tmp_path / "config.yaml"
    stored.write_text(yaml.safe_dump(old, sort_keys=False))
    assert printed(stored) == now
