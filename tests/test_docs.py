"""The README documents every verb, Makefile target, Makefile variable and config that exists, and names no
config or target that does not."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from neonet.run.cli import LIGHTNING_VERBS, PROJECT_VERBS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
MAKEFILE = (REPO / "Makefile").read_text(encoding="utf-8")


def phony_targets() -> list[str]:
    line = next(ln for ln in MAKEFILE.splitlines() if ln.startswith(".PHONY:"))
    return line.split(":", 1)[1].split()


def test_every_verb_has_a_row_in_the_verb_table() -> None:
    missing = [v for v in [*LIGHTNING_VERBS, *PROJECT_VERBS] if f"| `{v}` |" not in README]
    assert not missing, f"verbs without a README row: {missing}"


def test_every_make_target_is_documented_and_every_documented_target_exists() -> None:
    targets = phony_targets()
    assert not [t for t in targets if f"`make {t}" not in README], "targets missing from README"
    defined = set(re.findall(r"^([a-zA-Z_-]+):", MAKEFILE, flags=re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", README))
    assert named <= defined, f"README names targets the Makefile lacks: {sorted(named - defined)}"
    assert set(targets) <= defined


def test_every_makefile_variable_is_documented() -> None:
    variables = re.findall(r"^(?:export\s+)?([A-Z_]+)\s*\?=", MAKEFILE, flags=re.M)
    assert "CV_FLAGS" in variables and "JOBS" in variables
    missing = [v for v in variables if f"`{v}" not in README]
    assert not missing, f"Makefile variables not in README: {missing}"


def test_every_config_is_documented_and_every_documented_config_exists() -> None:
    configs = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "experiments").rglob("*.yaml"))
    assert len(configs) > 10
    written = set(re.findall(r"`((?:experiments/)?[\w/]*[\w*]+\.yaml)`", README))
    # a config is documented by its path or by its name (or a glob of it) in its folder's row
    undocumented = [
        c
        for c in configs
        if not any(c == w or fnmatch.fnmatch(c, w) or fnmatch.fnmatch(Path(c).name, w) or c.endswith("/" + w) for w in written)
    ]
    assert not undocumented, f"configs not in README: {undocumented}"
    stale = [w for w in written if w.startswith("experiments/") and not any(fnmatch.fnmatch(c, w) for c in configs)]
    assert not stale, f"README names configs that do not exist: {stale}"


def test_every_config_a_config_table_row_names_exists() -> None:
    """A row may name configs by path and then by name alone (`crop.yaml`): each name exists in that folder."""
    rows = [ln for ln in README.splitlines() if re.match(r"\| `experiments/[\w/]+\.yaml`", ln)]
    assert len(rows) > 5
    missing = []
    for row in rows:
        cell = row.split("|")[1]
        names = re.findall(r"`([\w/*]+\.yaml)`", cell)
        first = Path(names[0])
        for name in names:
            # a short name is relative to the first path's folder or one above it (`null/crop.yaml`)
            where = [name] if name.startswith("experiments/") else [f"{d.as_posix()}/{name}" for d in first.parents[:-1]]
            if not any(list(REPO.glob(w)) for w in where):
                missing.append(where[0])
    assert not missing, f"README's config table names configs that do not exist: {missing}"
