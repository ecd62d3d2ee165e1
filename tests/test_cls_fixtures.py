"""Builders of tiny NeoCls inputs (imported by the ``test_cls_*`` files): a patch cohort written like
``neonet crop`` writes it, a fake fold autoencoder checkpoint and a synthetic-patch manifest.

The patches are small (16x16x8) so that tests run in seconds; PNI+ patches carry a bright
"nerve" bar next to the tumour, which every classifier here can learn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from monai.networks.nets import AutoencoderKL

from neonet.cls.datamodule import ClsDataModule
from neonet.run.atomic import write_json
from neonet.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "tests" / "conf"
SHAPE = (16, 16, 8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run a test module's tiny 3D convolutions on one intra-op thread (restored afterwards).

    On small CPUs shared with other jobs, OpenMP's second thread makes such convolutions 10-100x
    slower; importing this fixture into a test module applies it there.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def patch_array(pni: int, rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE, strength: float = 1.0) -> np.ndarray:
    """One image patch in [0, 1]: noisy liver, a dark tumour, and for PNI+ a bright bar beside it."""
    img = 0.6 + 0.05 * rng.standard_normal(shape)
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = np.array(shape) / 2 + rng.uniform(-1, 1, 3)
    r = rng.uniform(2.5, 4.0)
    img[((x - c[0]) ** 2 + (y - c[1]) ** 2 + ((z - c[2]) * 2) ** 2) < r**2] = 0.3
    if pni:
        bar = (np.abs(y - c[1]) < 1.0) & (x > c[0] + r) & (x < c[0] + r + 4)
        img[bar] = 0.6 + 0.35 * strength
    return np.clip(img, 0, 1).astype(np.float32)


def save_nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([3.5, 3.5, 6.0, 1.0])), str(path))


def write_patch_cohort(
    root: Path, n: int = 12, experiment: str = "t", seed: int = 0, pni_fraction: float = 0.5
) -> dict[str, Any]:
    """``root/data/cases.csv`` + ``root/runs/<experiment>/patches/{images,labels,manifest.csv}``.

    Returns ``{"cases", "runs_dir", "experiment", "ws"}``.
    """
    rng = np.random.default_rng(seed)
    ws = Workspace(root / "runs", experiment)
    pdir = ws.patches_dir
    n_pos = int(round(n * pni_fraction))
    rows, case_rows = [], []
    for i in range(n):
        cid = f"c{i:03d}"
        pni = int(i < n_pos)
        save_nifti(pdir / "images" / f"{cid}.nii.gz", patch_array(pni, rng))
        save_nifti(pdir / "labels" / f"{cid}.nii.gz", np.zeros(SHAPE, np.uint8))
        rows.append(
            {
                "case_id": cid,
                "patient_id": f"p{i:03d}",
                "pni": pni,
                "image": f"images/{cid}.nii.gz",
                "label": f"labels/{cid}.nii.gz",
                "status": "ok",
            }
        )
        case_rows.append(
            {
                "case_id": cid,
                "image": f"../runs/{experiment}/patches/images/{cid}.nii.gz",
                "label": "",
                "pni": pni,
                "patient_id": f"p{i:03d}",
            }
        )
    pdir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(ws.patches_manifest, index=False)
    cases = root / "data" / "cases.csv"
    cases.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(case_rows).to_csv(cases, index=False)
    return {"cases": str(cases), "runs_dir": str(root / "runs"), "experiment": experiment, "ws": ws}


def autoencoder_args(conf: str = "pattennet.yaml") -> dict[str, Any]:
    """The AutoencoderKL init_args of a test config (the fake checkpoint must match them)."""
    cfg = yaml.safe_load((CONF / conf).read_text(encoding="utf-8"))
    return cfg["model"]["init_args"]["net"]["init_args"]["encoder"]["init_args"]["autoencoder"]["init_args"]


def write_fake_autoencoder(
    ws: Workspace, fold: int, seed: int = 0, prefix: str = "autoencoder.", train_cases: list[str] | None = None
) -> tuple[Path, AutoencoderKL]:
    """A Lightning-style ``{"state_dict": {prefix + key: tensor}}`` checkpoint at the fold's autoencoder path."""
    torch.manual_seed(seed)
    ae = AutoencoderKL(**autoencoder_args())
    path = ws.best_checkpoint("autoencoder", fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"{prefix}{k}": v for k, v in ae.state_dict().items()}, "epoch": 3}, path)
    if train_cases is not None:
        write_json(ws.artifact_path("autoencoder", fold), {"stage": "autoencoder", "fold": fold, "train_cases": train_cases})
    return path, ae


def write_synthetic(ws: Workspace, fold: int, sources: list[str], per_source: int = 1, seed: int = 5) -> Path:
    """``synthetic/fold<k>/manifest.csv`` with PNI+ patches derived from ``sources``."""
    rng = np.random.default_rng(seed)
    folder = ws.synthetic_dir(fold)
    rows = []
    for src in sources:
        for j in range(per_source):
            sid = f"syn-{src}-{j}"
            save_nifti(folder / "images" / f"{sid}.nii.gz", patch_array(1, rng))
            rows.append(
                {
                    "case_id": sid,
                    "source_case": src,
                    "image": f"images/{sid}.nii.gz",
                    "label": f"labels/{src}.nii.gz",
                    "pni": 1,
                    "seed": j,
                }
            )
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def cls_datamodule(cohort: dict, fold: int = 0, **kwargs: Any) -> ClsDataModule:
    """A ClsDataModule over a :func:`write_patch_cohort` cohort (3 folds, batches of 4)."""
    return ClsDataModule(
        cases=cohort["cases"],
        experiment=cohort["experiment"],
        runs_dir=cohort["runs_dir"],
        fold=fold,
        folds=3,
        batch_size=4,
        **kwargs,
    )
