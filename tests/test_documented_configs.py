"""Every config path that the README, the docs and the Makefile name exists.

The paths are parsed from the text, not listed here: ``experiments/...yaml`` and ``tests/conf/...yaml`` in
``README.md``, ``docs/*.md`` and ``data/README.md`` (a glob must match a file; a placeholder such as
``experiments/<yours>/x.yaml`` is an example, not a claim), and in the ``Makefile`` also
``$(EXPERIMENTS)/<name>.yaml``, resolved in every folder that ``EXPERIMENTS`` is given (its default and each
``EXPERIMENTS=...``), with the values of the shell ``for`` loops that name them (``baseline_$$net.yaml``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "data" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAKEFILE = REPO / "Makefile"

#: a repository-relative config path (letters, digits, ``_ - . / *`` and placeholders ``<...>``, ``{...}``)
CONFIG_PATH = re.compile(r"(?<![\w./-])((?:experiments|tests/conf)/[\w./*<>{}$-]*?\.ya?ml)(?![\w.])")
EXPERIMENTS_REF = re.compile(r"\$\(EXPERIMENTS\)/([\w./$-]+?\.ya?ml)")
FOR_LOOP = re.compile(r"for (\w+) in ([\w .$()-]+?); do(.*?)done", re.S)
MAKE_DEFAULT = re.compile(r"^(\w+)\s*\?=\s*(.*)$", re.M)


def documented_paths(text: str) -> set[str]:
    """Config paths named in ``text``, placeholders (``<stage>``, ``{a,b}``, ``$var``) left out."""
    return {p for p in CONFIG_PATH.findall(text) if not re.search(r"[<>{}$]", p)}


def experiments_folders(makefile: str, docs: list[str]) -> set[str]:
    """The folders ``$(EXPERIMENTS)`` takes: the Makefile's default and every ``EXPERIMENTS=folder`` given."""
    default = re.search(r"^EXPERIMENTS\s*\?=\s*(\S+)", makefile, flags=re.M)
    assert default, "the Makefile sets no default EXPERIMENTS"
    given = {m for text in [makefile, *docs] for m in re.findall(r"\bEXPERIMENTS=([\w./-]+)", text)}
    return {default.group(1), *given}


def makefile_configs(makefile: str) -> set[str]:
    """The config names that ``$(EXPERIMENTS)/<name>.yaml`` takes, shell ``for`` loop variables expanded."""
    names = set()
    for match in EXPERIMENTS_REF.finditer(makefile):
        name = match.group(1)
        loop = next((m for m in FOR_LOOP.finditer(makefile) if m.start() < match.start() < m.end()), None)
        if loop is None:
            names.add(name)
            continue
        var, values = loop.group(1), loop.group(2)
        for ref, default in MAKE_DEFAULT.findall(makefile):  # `for x in $(VAR)` loops over VAR's default value
            values = values.replace(f"$({ref})", default)
        values = re.sub(r"\$\(\w+\)", "", values).split()
        names |= {re.sub(rf"\$\$\{{?{var}\}}?", value, name) for value in values}
    return names


def exists(path: str) -> bool:
    return any(REPO.glob(path)) if "*" in path else (REPO / path).is_file()


def test_parsers_find_what_they_should() -> None:
    """The parsers on known text: a path, a glob, a placeholder, a Makefile loop."""
    text = "see `experiments/demo/pattennet.yaml`, experiments/*/crop.yaml and experiments/<yours>/x.yaml (tests/conf/seg.yaml)"
    assert documented_paths(text) == {"experiments/demo/pattennet.yaml", "experiments/*/crop.yaml", "tests/conf/seg.yaml"}
    make = (
        "a:\n\t$(CV) --config $(EXPERIMENTS)/seg.yaml\n"
        "b:\n\tfor net in r d; do \\\n\t\t$(CV) --config $(EXPERIMENTS)/b_$$net.yaml; \\\n\tdone\n"
    )
    assert makefile_configs(make) == {"seg.yaml", "b_r.yaml", "b_d.yaml"}
    assert experiments_folders("EXPERIMENTS ?= experiments/demo\n", ["make x EXPERIMENTS=experiments/paper"]) == {
        "experiments/demo",
        "experiments/paper",
    }


@pytest.mark.parametrize("doc", [*DOCS, MAKEFILE], ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_path_a_document_names_exists(doc: Path) -> None:
    named = documented_paths(doc.read_text(encoding="utf-8"))
    missing = sorted(p for p in named if not exists(p))
    assert not missing, f"{doc.relative_to(REPO)} names config(s) that do not exist: {missing}"


def test_every_makefile_config_exists_in_each_experiments_folder() -> None:
    makefile = MAKEFILE.read_text(encoding="utf-8")
    names = makefile_configs(makefile)
    assert {"seg.yaml", "pattennet.yaml", "pattennet_hist.yaml", "baseline_densenet121.yaml"} <= names
    folders = experiments_folders(makefile, [d.read_text(encoding="utf-8") for d in DOCS])
    missing = sorted(f"{folder}/{name}" for folder in folders for name in names if not (REPO / folder / name).is_file())
    assert not missing, f"Makefile targets use configs that do not exist: {missing}"
