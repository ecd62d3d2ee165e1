"""The trained folds of a stage, used together as an ensemble (``neonet predict-case``).

Which folds (every fold of the experiment unless named), whether each finished training
(``artifact.json`` status ``fit-complete`` or ``complete``, ``config.yaml`` and
``checkpoints/best.ckpt``), and each fold rebuilt by :func:`neonet.run.reload.load_trained_fold` from its
own ``config.yaml`` with ``best.ckpt`` loaded strictly.
A missing fold is an error that names its folder and the command that trains it.
"""

from __future__ import annotations

from pathlib import Path

from neonet.data.splits import read_splits
from neonet.errors import MissingUpstreamError, NeonetError
from neonet.run.reload import TrainedFold, load_trained_fold
from neonet.workspace import Workspace

#: Artifact statuses of a fold whose ``best.ckpt`` may be used.
USABLE_STATUSES = ("complete", "fit-complete")


#: One trained fold (kept under its former name; see :class:`neonet.run.reload.TrainedFold`).
FoldModel = TrainedFold


def train_command(ws: Workspace, stage: str, folds: list[int] | None = None, verb: str = "cv", force: bool = False) -> str:
    """The command that trains ``stage`` (or, for ``crop``, makes the crop settings); ``force``: re-trains finished folds."""
    base, extra = stage, []
    if _is_radiomics(ws, stage):
        rad_config = Path("experiments") / ws.experiment / "radiomics.yaml"
        shown = str(rad_config) if rad_config.is_file() else "<the radiomics config, e.g. experiments/demo/radiomics.yaml>"
        runs = f" --runs_dir {ws.runs_dir}" if str(ws.runs_dir) != "runs" else ""
        picked = f" --folds {' '.join(map(str, folds))}" if folds else ""
        return f"neonet radiomics --config {shown}{runs}{picked}" + (" --force" if force else "")
    if stage.endswith("_syn"):
        base, extra = stage[: -len("_syn")], [f"--model.stage={stage}", "--data.use_synthetic=true"]
    folder = Path("experiments") / ws.experiment
    config = next((c for c in (folder / f"{base}.yaml", folder / f"baseline_{base}.yaml") if c.is_file()), None)
    shown = str(config) if config else f"<the {base} config of experiment {ws.experiment!r}, e.g. experiments/demo/{base}.yaml>"
    if verb == "crop":
        return f"neonet crop --config {shown}"
    if str(ws.runs_dir) != "runs":
        extra += [f"--data.runs_dir={ws.runs_dir}", f"--data.experiment={ws.experiment}"]
    cmd = f"neonet cv --config {shown}" + (f" --folds {' '.join(map(str, folds))}" if folds else "")
    cmd += " --force" if force else ""
    return cmd + (" -- " + " ".join(extra) if extra else "")


def _is_radiomics(ws: Workspace, stage: str) -> bool:
    """The stage holds radiomics folds (their ``model.json`` / ``radiomics_config.json``: no ``artifact.json`` is read,
    whose own error message names this command), or is named ``radiomics`` and holds none yet."""
    folds = ws.stage_folds(stage)
    made = any(ws.radiomics_model(stage, k).is_file() or ws.radiomics_record(stage, k).is_file() for k in folds)
    return made or (stage == "radiomics" and not folds)


def is_trained(ws: Workspace, stage: str, fold: int) -> bool:
    """Whether the fold finished its fit (``artifact.json`` status ``fit-complete``/``complete``, ``config.yaml`` and
    ``checkpoints/best.ckpt``; a radiomics fold: status ``complete`` and ``model.json``)."""
    from neonet.radiomics.saved import is_radiomics_fold

    art = ws.read_artifact(stage, fold) or {}
    if is_radiomics_fold(art):
        return art.get("status") == "complete" and ws.radiomics_model(stage, fold).is_file()
    return (
        art.get("status") in USABLE_STATUSES
        and ws.best_checkpoint(stage, fold).is_file()
        and ws.config_path(stage, fold).is_file()
    )


def finished_folds(ws: Workspace, stage: str) -> list[int]:
    """Every fold of ``stage`` that finished its fit (at least one).

    Raises:
        MissingUpstreamError: no fold of ``stage`` finished; names the folders and the command that trains them.
    """
    found = [k for k in ws.stage_folds(stage) if is_trained(ws, stage, k)]
    if found:
        return found
    trained_folds(ws, stage)  # raises, naming the folds and the command
    raise MissingUpstreamError(f"a trained {stage} fold", ws.root / stage, train_command(ws, stage))


def trained_folds(ws: Workspace, stage: str, folds: list[int] | None = None, hint: str = "") -> list[int]:
    """The folds of ``stage`` to ensemble: ``folds``, or every fold of the experiment.

    Raises:
        MissingUpstreamError: when a fold has no finished fit (``artifact.json`` status
            ``fit-complete``/``complete``, ``config.yaml`` and ``checkpoints/best.ckpt``); the
            message names the folders and the command that trains them.
    """
    if folds is None:
        if ws.splits_path.is_file():
            folds = list(range(int(read_splits(ws.splits_path)["folds"])))
        else:
            found = sorted(int(p.name[4:]) for p in (ws.root / stage).glob("fold*") if p.name[4:].isdigit())
            folds = found or [0]
    if not folds:
        raise NeonetError("--folds is empty: name at least one fold")

    missing = [k for k in folds if not is_trained(ws, stage, k)]
    if missing:
        ready = [k for k in folds if k not in missing]
        if ready:
            hint += f"\nor ensemble only the finished fold(s): --folds [{','.join(map(str, ready))}]"
        raise MissingUpstreamError(
            f"trained {stage} fold(s) {', '.join(map(str, missing))} of experiment {ws.experiment!r} "
            + (
                "(model.json and status complete in artifact.json)"
                if _is_radiomics(ws, stage)
                else "(config.yaml, checkpoints/best.ckpt and a finished fit in artifact.json)"
            ),
            ", ".join(str(ws.stage_dir(stage, k)) for k in missing),
            train_command(ws, stage, missing) + hint,
        )
    return list(folds)


def load_fold(ws: Workspace, stage: str, fold: int) -> FoldModel:
    """The fold with ``best.ckpt`` loaded strictly: :func:`neonet.run.reload.load_trained_fold` under its former name."""
    return load_trained_fold(ws, stage, fold)
