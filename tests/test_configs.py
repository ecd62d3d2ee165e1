"""Shared YAML blocks: each config folder states its seed, trainer defaults and cohort once, in ``_shared.yaml``.

A stage config starts with ``config: _shared.yaml`` (jsonargparse applies a ``config`` key inside a config file
there and then, like ``--config``; the path is relative to the including file) and adds or overrides values with
dotted keys (``trainer.max_epochs: 6``, ``data.init_args.batch_size: 2``), which jsonargparse merges into the
included blocks key by key. A nested block after the include (``trainer:``, ``data:``, ``data.init_args:``)
would instead replace the included block whole, without a word, and a list of includes is ignored. These tests
keep the shipped configs on the safe side and check that every included value reaches the parsed config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from neonet.run.cli import main

REPO = Path(__file__).resolve().parents[1]
FOLDERS = [REPO / "experiments" / f for f in ("demo", "paper", "chaos")] + [REPO / "tests" / "conf"]
_MISSING = object()


def _raw(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _flat(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted path -> value of every leaf (dotted keys are paths already)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _included(path: Path) -> dict[str, Any]:
    """The leaves that the ``config:`` include chain of ``path`` sets (its own entries left out)."""
    include = _raw(path).get("config")
    if not include:
        return {}
    block = path.parent / include
    return {**_included(block), **_flat({k: v for k, v in _raw(block).items() if k != "config"})}


def _lookup(node: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


STAGES = [p for f in FOLDERS for p in sorted(f.glob("*.yaml")) if not p.name.startswith("_") and "model" in _raw(p)]
BLOCKS = [p for f in FOLDERS for p in sorted(f.glob("_*.yaml"))]


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_every_folder_has_its_block() -> None:
    assert [f for f in FOLDERS if not (f / "_shared.yaml").is_file()] == []
    assert len(STAGES) >= 20


@pytest.mark.parametrize("path", STAGES, ids=_id)
def test_stage_config_includes_a_block_of_its_folder_first(path: Path) -> None:
    raw = _raw(path)
    assert next(iter(raw)) == "config", f"{path.name}: `config: _shared.yaml` must come first (later keys override it)"
    include = raw["config"]
    assert isinstance(include, str), f"{path.name}: one include (jsonargparse ignores a list of them)"
    assert include.startswith("_") and "/" not in include and (path.parent / include).is_file()


@pytest.mark.parametrize("path", STAGES + [b for b in BLOCKS if "config" in _raw(b)], ids=_id)
def test_no_entry_replaces_an_included_block(path: Path) -> None:
    """A dict value at ``key`` replaces everything the include set below ``key``: use dotted keys there."""
    included = _included(path)
    for key, value in _raw(path).items():
        if key == "config" or not isinstance(value, dict):
            continue
        hidden = sorted(p for p in included if p.startswith(key + "."))
        assert not hidden, f"{path.name}: the nested `{key}:` block drops {hidden} of the include; write `{key}.<name>: value`"


@pytest.mark.parametrize("path", STAGES, ids=_id)
def test_every_included_value_reaches_the_parsed_config(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(path), "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    own = _flat({k: v for k, v in _raw(path).items() if k != "config"})
    for dotted, value in _included(path).items():
        if dotted not in own:
            assert _lookup(printed, dotted) == value, f"{path.name}: {dotted} of the include is lost"
    for dotted, value in own.items():
        if dotted.startswith(("trainer.", "data.")) and not isinstance(value, list):
            assert _lookup(printed, dotted) == value, f"{path.name}: {dotted} is not what the file says"


@pytest.mark.parametrize("block", BLOCKS, ids=_id)
def test_every_block_is_included_and_include_only(block: Path) -> None:
    users = [p for p in block.parent.glob("*.yaml") if _raw(p).get("config") == block.name]
    assert users, f"{block.name} is included by no config of {block.parent.name}/"
    assert "model" not in _raw(block), "a block holds what a folder shares, not a stage"


def test_chaos_seg_config_instantiates_for_the_shared_cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """experiments/chaos/seg.yaml builds NeoSeg for ../shared/real_cohorts/chaos_mr_t2spir (liver only, 5 folds)."""
    import torch

    from neonet.run.lightning_cli import NeonetCLI
    from neonet.seg import SegDataModule, SegModule

    config = REPO / "experiments" / "chaos" / "seg.yaml"
    cases = _included(config)["data.init_args.cases"]
    assert cases == "../shared/real_cohorts/chaos_mr_t2spir/cases.csv"  # relative to the repository root
    monkeypatch.chdir(REPO)
    cli = NeonetCLI(args=["--config", str(config), f"--data.runs_dir={tmp_path}"], run=False)
    model, data = cli.model, cli.datamodule
    assert isinstance(model, SegModule) and isinstance(data, SegDataModule)
    assert data.label_map.liver == (1,) and data.label_map.tumor == () and data.label_map.other == (2, 3, 4)
    assert data.folds == 5 and data.spacing == (4.1, 4.1, 7.7) and data.patch_size is None and data.flip_axes == ()
    with torch.no_grad():  # whole resampled volumes (79 x 79 x 31-46 voxels, padded to 80 x 80 x 32 or 48)
        for shape in ((80, 80, 32), (80, 80, 48)):
            assert model.eval()(torch.zeros(1, 1, *shape)).shape == (1, 3, *shape)
    if (REPO / cases).is_file():
        assert len(data.all_cases) == 10 and all(c.label is not None and c.pni is None for c in data.all_cases)
