"""The synthetic confound: every synthetic patch is decoded by the fold's autoencoder (and, by default, PNI+).

Checks the real-vs-synthetic discriminator of the quality report (separates different sets, not identical
ones, never reads test patients), ``neonet synthesize --classes both`` (PNI- patches with their class in the
manifest, PNI+ ones unchanged, another folder) and ``ClsDataModule(roundtrip_real=True)`` (training real
patches through the fold's autoencoder, cached once per fold; validation and test patches untouched).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.networks.nets import AutoencoderKL
from scipy import ndimage

from neonet.data.patches import PATCH_LIVER, PATCH_SHELL, PATCH_TUMOR
from neonet.errors import NeonetError
from neonet.gen import discriminator as disc
from neonet.workspace import Workspace
from test_cls_fixtures import (  # noqa: F401 - one_thread is an autouse fixture
    autoencoder_args,
    cls_datamodule,
    one_thread,
    write_fake_autoencoder,
    write_patch_cohort,
)


# ----------------------------------------------------------------------------- the discriminator
def _noise(n: int, seed: int, smooth: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = 0.6 + 0.1 * rng.standard_normal((n, 16, 16, 8))
    if smooth:
        images = np.stack([ndimage.gaussian_filter(im, smooth) for im in images])
    return images


def test_discriminator_separates_smooth_from_noisy_patches():
    real, synthetic = _noise(30, 0), _noise(30, 1, smooth=1.0)  # decoded patches are smoother
    groups = [f"p{i}" for i in range(30)]
    res = disc.discriminate(disc.intensity_features(real), disc.intensity_features(synthetic), groups, groups)
    assert res.auc > 0.95 and res.ci_lo > 0.8
    assert (res.n_real, res.n_synthetic) == (30, 30)
    text = disc.sentence(res.auc, res.ci_lo, res.ci_hi, "synthetic PNI+ patches", "real ones", "intensity", confound=True)
    assert text.startswith("Synthetic PNI+ patches are distinguishable") and "decoded → PNI+" in text


def test_discriminator_does_not_separate_one_distribution():
    real, synthetic = _noise(40, 2), _noise(40, 3)
    groups = [f"p{i}" for i in range(40)]
    res = disc.discriminate(disc.intensity_features(real), disc.intensity_features(synthetic), groups, groups)
    # cross-validated AUCs of one distribution scatter below 0.5 on average (discriminator.py): no separation
    assert res.auc < 0.6 and res.ci_lo < 0.5
    assert "not distinguishable" in disc.sentence(res.auc, res.ci_lo, res.ci_hi, "synthetic patches", "real ones", "intensity")


def test_discriminator_keeps_a_patient_in_one_cv_fold():
    groups = ["a", "a", "a", "b", "c", "c", "d", "e", "e", "e", "e", "f"]
    folds = disc.group_folds(groups, k=3, seed=1)
    for g in set(groups):
        assert len({f for f, h in zip(folds, groups) if h == g}) == 1
    assert set(folds) == {0, 1, 2}
    # synthetic patches that copy their source patient's real patch: each pair scores alike, AUC exactly 0.5
    real = _noise(20, 4)
    groups = [f"p{i}" for i in range(20)]
    res = disc.discriminate(disc.intensity_features(real), disc.intensity_features(real.copy()), groups, groups)
    assert res.auc == pytest.approx(0.5)


def test_encoder_features_pool_each_channel():
    from neonet.nets import AutoencoderKLEncoder

    torch.manual_seed(0)
    encoder = AutoencoderKLEncoder(AutoencoderKL(**autoencoder_args()), tap="features")
    feats = disc.encoder_features(encoder, _noise(3, 5))
    assert feats.shape == (3, 2 * encoder.out_channels) and np.isfinite(feats).all()


# ----------------------------------------------------------------------------- a small experiment
def _labelled_cohort(root: Path, n: int = 15) -> dict[str, Any]:
    """``write_patch_cohort`` with label patches: liver, a 2-voxel shell around the dark tumour, tumour."""
    cohort = write_patch_cohort(root, n=n, pni_fraction=0.4)
    ws: Workspace = cohort["ws"]
    manifest = pd.read_csv(ws.patches_manifest)
    for _, row in manifest.iterrows():
        img = nib.load(str(ws.patches_dir / row["image"]))
        tumour = np.asarray(img.dataobj) < 0.4
        label = np.full(tumour.shape, PATCH_LIVER, np.uint8)
        label[ndimage.binary_dilation(tumour, iterations=2)] = PATCH_SHELL
        label[tumour] = PATCH_TUMOR
        nib.save(nib.Nifti1Image(label, img.affine), str(ws.patches_dir / row["label"]))
    cohort["dm"] = cls_datamodule(cohort, fold=0)
    assert cohort["dm"].split.train  # writes splits.json
    return cohort


class FakeGenerator:
    """Stands in for the fold's ControlNet: an image that follows the mask, with the requested class as
    its brightness, so a test can check which class each patch was asked for."""

    asked: list[int] = []

    def __init__(self, ws: Workspace, fold: int, device: torch.device) -> None:
        self.hashes = {"autoencoder": "a" * 64, "controlnet": "c" * 64, "diffusion": "d" * 64}
        self.checkpoints = {"autoencoder": "ae.ckpt", "controlnet": "cn.ckpt", "diffusion": "diff.ckpt"}
        self.schedule = None

    def generate(self, mask: np.ndarray, seed: int, *args: Any, pni: int = 1) -> np.ndarray:
        FakeGenerator.asked.append(int(pni))
        return (mask / 3.0 * (0.5 + 0.5 * pni)).astype(np.float32)


@pytest.fixture
def fake_generator(monkeypatch: pytest.MonkeyPatch) -> type[FakeGenerator]:
    import neonet.gen.synthesize as synth

    FakeGenerator.asked = []
    monkeypatch.setattr(synth, "FoldGenerator", FakeGenerator)
    monkeypatch.setattr(synth, "_latent_shape", lambda gen, shape: (3, *[s // 2 for s in shape]))
    monkeypatch.setattr(synth, "effective_steps", lambda schedule, sampler, steps: int(steps))
    return FakeGenerator


def test_synthesize_both_classes_writes_pni_negative_patches_beside_the_default_set(tmp_path, fake_generator):
    from neonet.gen.synthesize import synthesize

    cohort = _labelled_cohort(tmp_path)
    ws, dm = cohort["ws"], cohort["dm"]
    common = {"experiment": cohort["experiment"], "runs_dir": Path(cohort["runs_dir"]), "folds": [0], "device": "cpu"}
    assert synthesize(**common, quality=False) == 0
    pos_only = pd.read_csv(ws.synthetic_manifest(0), dtype={"case_id": str})
    before = {p: p.stat().st_mtime_ns for p in ws.synthetic_dir(0).rglob("*") if p.is_file()}
    fake_generator.asked = []
    assert synthesize(**common, quality=False, classes="both", neg_ratio=None, name="synthetic_both") == 0

    both = pd.read_csv(ws.synthetic_manifest(0, "synthetic_both"), dtype={"case_id": str, "source_case": str})
    pni = {i["case_id"]: int(i["label"]) for i in dm.real_items(dm.split.train, "train")}
    n_pos, n_neg = sum(pni.values()), len(pni) - sum(pni.values())
    s_pos = n_neg - n_pos  # 1:1, as without --classes both
    s_neg = round(n_neg * s_pos / n_pos)  # neg_ratio null: the same synthetic share in both classes
    assert (both["pni"] == 1).sum() == s_pos and (both["pni"] == 0).sum() == s_neg > 0
    assert fake_generator.asked == [1] * s_pos + [0] * s_neg  # the generator is asked for each patch's class
    assert all(pni[s] == c for s, c in zip(both["source_case"], both["pni"]))  # masks of the class's training cases
    assert set(both["source_case"]) <= set(dm.split.train)
    assert (both.loc[both["pni"] == 0, "case_id"].str.startswith("syn_f0_neg")).all()
    # the PNI+ patches are the ones the default set has (same ids, seeds, masks), and the default set is untouched
    pos = both[both["pni"] == 1].reset_index(drop=True)
    assert pos["case_id"].tolist() == pos_only["case_id"].tolist() and pos["seed"].tolist() == pos_only["seed"].tolist()
    for a, b in zip(pos["label"], pos_only["label"]):
        mask_both = np.asarray(nib.load(str(ws.synthetic_dir(0, "synthetic_both") / a)).dataobj)
        assert np.array_equal(mask_both, np.asarray(nib.load(str(ws.synthetic_dir(0) / b)).dataobj))
    assert {p: p.stat().st_mtime_ns for p in ws.synthetic_dir(0).rglob("*") if p.is_file()} == before
    # the classifier reads the set it is given, both classes
    dm_both = cls_datamodule(cohort, fold=0, use_synthetic=True, synthetic_set="synthetic_both")
    assert dm_both.class_counts() == (n_neg + s_neg, n_pos + s_pos)
    # a rerun keeps the patches; other settings are refused with the way on
    assert synthesize(**common, quality=False, classes="both", neg_ratio=None, name="synthetic_both") == 0
    with pytest.raises(NeonetError, match="neg_ratio"):
        synthesize(**common, quality=False, classes="both", neg_ratio=1.0, name="synthetic_both")
    with pytest.raises(NeonetError, match="synthetic_<name>"):
        synthesize(**common, quality=False, classes="both", name="pattennet")


def test_quality_discriminator_reads_training_patients_only(tmp_path, fake_generator, monkeypatch):
    import neonet.gen.quality as quality
    from neonet.gen.synthesize import synthesize

    cohort = _labelled_cohort(tmp_path)
    ws, split = cohort["ws"], cohort["dm"].split
    common = {"experiment": cohort["experiment"], "runs_dir": Path(cohort["runs_dir"]), "folds": [0], "device": "cpu"}
    assert synthesize(**common, quality=False, classes="both", neg_ratio=1.0, name="synthetic_both") == 0
    loaded: list[str] = []
    seen: list[str] = []
    real_load, real_disc = quality.load_patch, quality.fold_discrimination
    monkeypatch.setattr(quality, "load_patch", lambda r, *a, **k: loaded.append(r.case_id) or real_load(r, *a, **k))

    def spy(ws_: Workspace, fold: int, real: list[dict[str, Any]], *rest: Any) -> Any:
        seen.extend(it["case_id"] for it in real)
        return real_disc(ws_, fold, real, *rest)

    monkeypatch.setattr(quality, "fold_discrimination", spy)
    table = quality.quality_report(ws, [0], synthetic="synthetic_both")
    assert loaded and set(loaded) <= set(split.fit) and not set(loaded) & set(split.test)
    assert seen and set(seen) <= set(split.train)
    disc_table = pd.read_csv(ws.gen_discriminator_report("csv", "synthetic_both"))
    assert set(disc_table["class"]) == {"PNI+", "PNI-"} and set(disc_table["fold"].astype(str)) == {"0", "pooled"}
    assert 0.0 <= table.loc[0, "disc_auc_intensity"] <= 1.0
    assert ws.gen_discriminator_report("png", "synthetic_both").is_file()
    assert "## Real vs synthetic" in ws.gen_quality_report("md", synthetic="synthetic_both").read_text(encoding="utf-8")
    assert not ws.gen_quality_report().exists()  # the default set's report is another file
    with pytest.raises(ValueError, match="training patches only"):
        test_items = [{"case_id": c, "pni": 1, "patient_id": c, "image": torch.zeros(1, 2, 2, 2)} for c in split.test]
        real_disc(ws, 0, test_items, pd.DataFrame({"pni": [1]}), np.zeros((1, 2, 2, 2)))


# ----------------------------------------------------------------------------- round trip
def test_roundtrip_real_applies_to_training_patches_only_and_is_cached(tmp_path, monkeypatch):
    import neonet.gen.roundtrip as rt

    cohort = _labelled_cohort(tmp_path)
    ws, split = cohort["ws"], cohort["dm"].split
    _, autoencoder = write_fake_autoencoder(ws, 0, seed=3)
    loads: list[str] = []
    monkeypatch.setattr(rt, "load_autoencoder", lambda ckpt: loads.append(str(ckpt)) or autoencoder)
    dm = cls_datamodule(cohort, fold=0, roundtrip_real=True)
    train, val, test = dm.items("train"), dm.items("val"), dm.items("test")
    assert len(loads) == 1
    folder = ws.roundtrip_dir(0)
    assert all(Path(i["image"]).parent == folder / "images" for i in train)
    assert {p.name.removesuffix(".nii.gz") for p in (folder / "images").iterdir()} == set(split.train)
    plain = cls_datamodule(cohort, fold=0)
    assert [i["image"] for i in val] == [i["image"] for i in plain.items("val")]
    assert [i["image"] for i in test] == [i["image"] for i in plain.items("test")]
    # each cached patch is the autoencoder's round trip of the real patch
    first = plain.items("train")[0]
    original = np.asarray(nib.load(first["image"]).dataobj, dtype=np.float32)
    cached = np.asarray(nib.load(str(folder / "images" / f"{first['case_id']}.nii.gz")).dataobj)
    np.testing.assert_allclose(cached, rt.roundtrip(autoencoder, original[None])[0], atol=1e-5)
    assert not np.allclose(cached, original, atol=1e-3)
    assert dm.upstream()["roundtrip"]["path"] == str(ws.roundtrip_record(0))
    # cached once per fold: a second data module reuses it; a retrained autoencoder rebuilds it
    cls_datamodule(cohort, fold=0, roundtrip_real=True).items("train")
    assert len(loads) == 1
    _, autoencoder = write_fake_autoencoder(ws, 0, seed=4)
    cls_datamodule(cohort, fold=0, roundtrip_real=True).items("train")
    assert len(loads) == 2
    rebuilt = np.asarray(nib.load(str(folder / "images" / f"{first['case_id']}.nii.gz")).dataobj)
    np.testing.assert_allclose(rebuilt, rt.roundtrip(autoencoder, original[None])[0], atol=1e-5)
