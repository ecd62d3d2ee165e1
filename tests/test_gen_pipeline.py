"""NeoGen end to end on a toy patch cohort through the real CLI (CPU, tiny configs in tests/conf/).

One module-scoped chain for fold 0: autoencoder fit → latent cache → diffusion fit (then resumed)
→ ControlNet fit → synthesize → quality report. The no-leakage test checks every artifact of the
chain against the fold's split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neonet.data.patches import patch_records
from neonet.errors import MissingUpstreamError, NeonetError
from neonet.gen.latents import build_latent_cache, read_fold
from neonet.gen.mask_aug import mask_digest
from neonet.gen.toy import write_toy_cohort
from neonet.run.atomic import read_json, sha256_file, write_json
from neonet.run.cli import main
from neonet.run.provenance import FileRecord, OutOfDateError, Provenance, read_provenance
from neonet.run.reload import load_checkpoint_fold, load_trained_fold
from neonet.workspace import Workspace

CONF = Path(__file__).resolve().parent / "conf"
EXP = "toy"
FOLD = 0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny 3D convs are fastest single-threaded (and do not stall when other jobs share the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fit(stage: str, root: Path, *extra: str) -> int:
    return main(
        [
            "fit",
            "--config",
            str(CONF / f"{stage}.yaml"),
            "--data.cases",
            str(root / "data" / "cases.csv"),
            "--data.runs_dir",
            str(root / "runs"),
            "--data.fold",
            str(FOLD),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("gen")
    write_toy_cohort(root, experiment=EXP, cases=12, pni_fraction=0.34, seed=3)
    ws = Workspace(root / "runs", EXP)
    assert fit("autoencoder", root) == 0
    build_latent_cache(ws, FOLD, samples=2)
    assert fit("diffusion", root, "--trainer.max_epochs=1") == 0
    first = torch.load(ws.last_checkpoint("diffusion", FOLD), map_location="cpu", weights_only=False)
    assert fit("diffusion", root, "--trainer.max_epochs=2", "--ckpt_path", str(ws.last_checkpoint("diffusion", FOLD))) == 0
    assert fit("controlnet", root) == 0
    return {"root": root, "ws": ws, "diffusion_first": first}


def test_autoencoder_fit_through_cli(chain):
    ws = chain["ws"]
    art = ws.read_artifact("autoencoder", FOLD)
    assert art["status"] == "fit-complete" and art["monitor"] == "val/psnr"
    assert Path(art["best_checkpoint"]["path"]).is_file()
    for key in ("val/psnr", "val/ssim", "val/ms_ssim"):
        assert np.isfinite(art["final_metrics"][key])
    assert "train/adv_d" in art["final_metrics"]  # the discriminator trained after its warm-up epoch
    assert (ws.stage_dir("autoencoder", FOLD) / "reconstruction.png").stat().st_size > 1000


def _rewrite_record(path: Path, **changes) -> None:
    """Rewrite a provenance record with some of its parts replaced (to fake another origin)."""
    record = read_provenance(path, "test record")
    write_json(
        path,
        Provenance(
            **{"settings": record.settings, "inputs": record.inputs, "outputs": record.outputs, "extra": record.extra, **changes}
        ).to_json(),
    )


def test_latent_cache_manifest_and_refusals(chain):
    from neonet.gen.latent_data import LatentDataModule

    ws, root = chain["ws"], chain["root"]
    split = read_fold(ws, FOLD)
    record = read_provenance(ws.latent_record(FOLD), "latent cache")
    assert record.inputs["autoencoder checkpoint"].sha256 == sha256_file(ws.best_checkpoint("autoencoder", FOLD))
    assert record.outputs["latent cache"].sha256 == sha256_file(ws.latent_cache_file(FOLD))
    assert record.settings == {
        "samples": 2,
        "flip_axes": [0, 1],
        "seed": 0,
        "split": {"train": sorted(split.train), "val": sorted(split.val)},
    }
    manifest = pd.read_csv(ws.latent_manifest(FOLD), dtype={"case_id": str})
    train_rows = manifest[manifest["split"] == "train"]
    assert set(train_rows["case_id"]) == set(split.train)
    assert set(manifest.loc[manifest["split"] == "val", "case_id"]) == set(split.val)
    assert len(train_rows) == len(split.train) * 4 * 2  # 4 flip combinations x 2 posterior samples
    dm = LatentDataModule(cases=str(root / "data" / "cases.csv"), experiment=EXP, runs_dir=str(root / "runs"), fold=FOLD, folds=3)
    # out of date: the cache names another autoencoder checkpoint, or another split
    meta_path = ws.latent_record(FOLD)
    good = meta_path.read_bytes()
    _rewrite_record(meta_path, inputs={"autoencoder checkpoint": FileRecord("x", "0" * 64)})
    try:
        with pytest.raises(
            OutOfDateError,
            match=r"(?s)^the latent cache of fold 0 at .*latents/fold0 was made from "
            r"other settings or inputs than this command's: input autoencoder "
            r"checkpoint .*best\.ckpt changed \(sha256 000000000000… -> .*"
            r"Re-run with --force.*python -m neonet.gen.latents .*--force true",
        ):
            dm.setup("fit")
        meta_path.write_bytes(good)
        _rewrite_record(meta_path, settings={**record.settings, "split": {"train": split.train[1:], "val": split.val}})
        with pytest.raises(OutOfDateError, match=r"setting split\.train: \["):
            dm.setup("fit")
    finally:
        meta_path.write_bytes(good)
    # missing
    moved = meta_path.with_suffix(".bak")
    meta_path.rename(moved)
    try:
        with pytest.raises(MissingUpstreamError, match="neonet.gen.latents"):
            LatentDataModule(
                cases=str(root / "data" / "cases.csv"), experiment=EXP, runs_dir=str(root / "runs"), fold=FOLD, folds=3
            ).setup("fit")
    finally:
        moved.rename(meta_path)


class _Touch:
    """Pickles as ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_latent_cache_is_read_weights_only(chain, tmp_path):
    from neonet.gen.latents import load_latent_cache

    ws = chain["ws"]
    meta, cache = load_latent_cache(ws, FOLD)
    assert cache["z"].shape[0] == sum(meta["n_latents"].values()) and isinstance(cache["case_id"][0], str)
    assert meta["settings"] == {"samples": 2, "flip_axes": [0, 1], "seed": 0}  # what the stages' artifacts record
    assert meta["autoencoder_checkpoint"]["sha256"] == sha256_file(ws.best_checkpoint("autoencoder", FOLD))
    path, record_path = ws.latent_cache_file(FOLD), ws.latent_record(FOLD)
    original, good, marker = path.read_bytes(), record_path.read_bytes(), tmp_path / "cache_ran"

    def recorded() -> None:  # a record that vouches for the altered file: only the weights-only load stands in the way
        _rewrite_record(record_path, outputs={"latent cache": FileRecord.of(path)})

    try:
        torch.save({**cache, "extra": _Touch(marker)}, path)
        with pytest.raises(OutOfDateError, match=r"output latent cache .*cache\.pt changed after it was recorded"):
            load_latent_cache(ws, FOLD)  # cache.pt is not the file cache.json vouches for
        recorded()
        with pytest.raises(
            NeonetError, match=r"(?s)^.*cache\.pt: refused to load this latent cache.*python -m neonet\.gen\.latents"
        ):
            load_latent_cache(ws, FOLD)
        path.write_bytes(original[: len(original) // 3])
        recorded()
        with pytest.raises(NeonetError, match=r"(?s)truncated or corrupt.*python -m neonet\.gen\.latents .*--force true"):
            load_latent_cache(ws, FOLD)
    finally:
        path.write_bytes(original)
        record_path.write_bytes(good)
    assert not marker.exists()


def test_latent_cache_record_of_before_provenance_is_current(chain, caplog):
    """A ``cache.json`` as neonet wrote it before ``neonet.run.provenance`` is read: neither rebuilt nor refused."""
    from neonet.gen.latents import load_latent_cache

    ws = chain["ws"]
    record_path, cache_path = ws.latent_record(FOLD), ws.latent_cache_file(FOLD)
    good = record_path.read_bytes()
    record = read_provenance(record_path, "latent cache")
    ckpt = record.inputs["autoencoder checkpoint"]
    old_format = {
        **record.extra,
        "autoencoder_checkpoint": ckpt.to_json(),
        "settings": {k: v for k, v in record.settings.items() if k != "split"},
        "cache_sha256": record.outputs["latent cache"].sha256,
    }
    try:
        write_json(record_path, old_format)
        stamp = cache_path.stat().st_mtime_ns
        with caplog.at_level("INFO", logger="neonet.gen.latents"):
            build_latent_cache(ws, FOLD, samples=2)
        assert "is up to date" in caplog.text and cache_path.stat().st_mtime_ns == stamp
        meta, _ = load_latent_cache(ws, FOLD)
        assert meta["autoencoder_checkpoint"] == ckpt.to_json() and meta["n_latents"] == record.extra["n_latents"]
        write_json(record_path, {**old_format, "train_cases": [*old_format["train_cases"], "not_in_this_fold"]})
        with pytest.raises(OutOfDateError, match=r"setting split\.train: \[.*'not_in_this_fold'"):
            load_latent_cache(ws, FOLD)
    finally:
        record_path.write_bytes(good)


def test_diffusion_scale_factor_survives_reload_and_resume_continues(chain):
    from neonet.gen.diffusion import DiffusionModule

    ws, first = chain["ws"], chain["diffusion_first"]
    last = torch.load(ws.last_checkpoint("diffusion", FOLD), map_location="cpu", weights_only=False)
    scale = float(first["state_dict"]["scale_factor"])
    assert scale > 0
    assert first["global_step"] > 0 and last["global_step"] == 2 * first["global_step"]  # resumed, not restarted
    assert last["epoch"] == first["epoch"] + 1
    assert float(last["state_dict"]["scale_factor"]) == scale  # restored, not recomputed from a new batch
    module = load_trained_fold(ws, "diffusion", FOLD).module
    assert isinstance(module, DiffusionModule)
    assert float(module.scale_factor) == scale
    assert ws.read_artifact("diffusion", FOLD)["scale_factor"] == pytest.approx(scale)
    ema, raw = module.sampling_unet().state_dict(), module.unet.state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)  # EMA weights are a separate copy


def test_controlnet_fit_builds_on_diffusion(chain):
    from neonet.gen.controlnet import ControlNetModule
    from neonet.gen.diffusion import DiffusionModule

    ws = chain["ws"]
    art = ws.read_artifact("controlnet", FOLD)
    assert art["status"] == "fit-complete"
    assert art["upstream"]["diffusion"]["sha256"] == sha256_file(ws.best_checkpoint("diffusion", FOLD))
    assert art["upstream"]["autoencoder"]["sha256"] == sha256_file(ws.best_checkpoint("autoencoder", FOLD))
    assert art["scale_factor"] == pytest.approx(ws.read_artifact("diffusion", FOLD)["scale_factor"])
    module = load_checkpoint_fold(ws.best_checkpoint("controlnet", FOLD), expect=ControlNetModule).module  # self-contained
    assert all(not p.requires_grad for p in module.unet.parameters())
    stored = torch.load(ws.best_checkpoint("controlnet", FOLD), map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(module.state_dict()[k], v) for k, v in stored.items())
    assert float(module.scale_factor) == pytest.approx(art["scale_factor"])
    with pytest.raises(NeonetError, match="is not a DiffusionModule"):
        load_checkpoint_fold(ws.best_checkpoint("controlnet", FOLD), expect=DiffusionModule)


@pytest.fixture(scope="module")
def synthesized(chain) -> pd.DataFrame:
    from neonet.gen.synthesize import synthesize

    ws = chain["ws"]
    assert synthesize(experiment=EXP, runs_dir=ws.runs_dir, folds=[FOLD], steps=3, device="cpu") == 0
    return pd.read_csv(ws.synthetic_dir(FOLD) / "manifest.csv", dtype={"case_id": str, "source_case": str})


def test_synthesize_balances_the_fold_exactly(chain, synthesized):
    import nibabel as nib

    ws = chain["ws"]
    train = patch_records(ws, read_fold(ws, FOLD).train)
    n_pos, n_neg = sum(r.pni == 1 for r in train), sum(r.pni == 0 for r in train)
    assert n_neg > n_pos, "the toy cohort must leave fold 0 imbalanced"
    assert len(synthesized) == n_neg - n_pos  # exactly 1:1 after adding them
    assert (synthesized["pni"] == 1).all()
    digests = set()
    for _, row in synthesized.iterrows():
        img = np.asarray(nib.load(str(ws.synthetic_dir(FOLD) / row["image"])).dataobj)
        lab = np.asarray(nib.load(str(ws.synthetic_dir(FOLD) / row["label"])).dataobj).astype(np.uint8)
        assert img.shape == lab.shape == (16, 16, 8) and 0.0 <= img.min() and img.max() <= 1.0
        assert (lab == 3).any()
        digests.add(mask_digest(lab))
        assert row["sampler"] == "ddim" and row["steps"] == 3 and len(row["controlnet_sha256"]) == 64
        assert "elastic_seed" in json.loads(row["mask_aug"])
    assert len(digests) == len(synthesized)  # no two conditioning masks identical


def test_synthesize_rerun_skips_and_refuses_other_settings(chain, synthesized):
    from neonet.gen.synthesize import synthesize

    ws = chain["ws"]
    first = ws.synthetic_dir(FOLD) / synthesized["image"].iloc[0]
    stamp = first.stat().st_mtime_ns
    synthesize(experiment=EXP, runs_dir=ws.runs_dir, folds=[FOLD], steps=3, device="cpu", quality=False)
    assert first.stat().st_mtime_ns == stamp
    with pytest.raises(OutOfDateError) as info:
        synthesize(experiment=EXP, runs_dir=ws.runs_dir, folds=[FOLD], steps=4, device="cpu", quality=False)
    assert str(info.value) == (
        f"the synthetic patch folder of fold 0 at {ws.synthetic_dir(FOLD)} was made from other settings or inputs than "
        "this command's: setting steps: 3 (stored) -> 4 (now).\nRe-run with --force to replace it (or write to another "
        "--experiment)."
    )
    assert first.stat().st_mtime_ns == stamp
    record = read_provenance(ws.synthetic_config(FOLD), "synthetic patches")
    assert set(record.inputs) == {"autoencoder checkpoint", "controlnet checkpoint", "diffusion checkpoint", "patch manifest"}
    assert record.inputs["controlnet checkpoint"].sha256 == sha256_file(ws.best_checkpoint("controlnet", FOLD))
    assert record.inputs["diffusion checkpoint"].sha256 == synthesized["diffusion_sha256"].iloc[0]
    # a retrained checkpoint, or patches cropped again, need --force as well
    patch_manifest, original = ws.patches_manifest, ws.patches_manifest.read_bytes()
    try:
        patch_manifest.write_bytes(original + b"\n")
        with pytest.raises(OutOfDateError, match=r"input patch manifest .*manifest\.csv changed \(sha256 "):
            synthesize(experiment=EXP, runs_dir=ws.runs_dir, folds=[FOLD], steps=3, device="cpu", quality=False)
    finally:
        patch_manifest.write_bytes(original)


def test_synthesize_record_of_before_provenance_is_current(chain, synthesized):
    """A ``synth_config.json`` as neonet wrote it before ``neonet.run.provenance`` is read and left as it is."""
    from neonet.gen.synthesize import synthesize

    ws = chain["ws"]
    path = ws.synthetic_config(FOLD)
    good = path.read_bytes()
    record = read_provenance(path, "synthetic patches")
    names = ("autoencoder", "controlnet", "diffusion")
    old_format = {
        **record.settings,
        "checkpoints": {n: record.inputs[f"{n} checkpoint"].path for n in names},
        "sha256": {n: record.inputs[f"{n} checkpoint"].sha256 for n in names},
    }
    first = ws.synthetic_dir(FOLD) / synthesized["image"].iloc[0]
    stamp = first.stat().st_mtime_ns
    try:
        write_json(path, old_format)
        synthesize(experiment=EXP, runs_dir=ws.runs_dir, folds=[FOLD], steps=3, device="cpu", quality=False)
        assert first.stat().st_mtime_ns == stamp and read_json(path) == old_format
        with pytest.raises(OutOfDateError, match=r"setting eta: 0\.0 \(stored\) -> 0\.5 \(now\)"):
            synthesize(experiment=EXP, runs_dir=ws.runs_dir, folds=[FOLD], steps=3, eta=0.5, device="cpu", quality=False)
    finally:
        path.write_bytes(good)


def test_synthesize_rerun_keeps_a_current_quality_report(chain, synthesized, caplog):
    from neonet.gen.quality import quality_is_current
    from neonet.gen.synthesize import synthesize

    ws = chain["ws"]
    report = ws.gen_quality_report()
    stamp = report.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="neonet.gen.synthesize"):
        synthesize(experiment=EXP, runs_dir=ws.runs_dir, folds=[FOLD], steps=3, device="cpu")
    assert report.stat().st_mtime_ns == stamp  # not recomputed
    assert "is up to date" in caplog.text
    assert not quality_is_current(ws, [FOLD], near_copy_threshold=0.9)  # other settings: stale
    manifest = ws.synthetic_dir(FOLD) / "manifest.csv"
    original = manifest.read_bytes()
    try:
        manifest.write_bytes(original + b"\n")
        assert not quality_is_current(ws, [FOLD])  # other synthetic patches: stale
    finally:
        manifest.write_bytes(original)
    assert quality_is_current(ws, [FOLD])


def test_quality_report_of_before_provenance_is_current(chain, synthesized):
    """A ``gen_quality.json`` as neonet wrote it before ``neonet.run.provenance`` (settings and digests under
    ``inputs``) still counts as current, so an unchanged experiment's report is not recomputed."""
    from neonet.gen.quality import quality_is_current

    ws = chain["ws"]
    path = ws.gen_quality_report()
    good = path.read_bytes()
    record = read_provenance(path, "quality report")
    names = (
        "splits",
        "patches",
        f"synthetic_fold{FOLD}",
        f"synthetic_config_fold{FOLD}",
        f"autoencoder_fold{FOLD}",
        f"seg_fold{FOLD}",
    )
    digests = {n: record.inputs[n].sha256 if n in record.inputs else None for n in names}
    assert digests[f"seg_fold{FOLD}"] is None and all(digests[n] for n in names[:-1])
    try:
        write_json(path, {**record.extra, "inputs": {**record.settings, "sha256": digests}})
        assert quality_is_current(ws, [FOLD])
        assert not quality_is_current(ws, [FOLD], min_segmenter_dice=0.7)
    finally:
        path.write_bytes(good)


def test_no_leakage_into_fold_models_or_synthetic_patches(chain, synthesized):
    ws = chain["ws"]
    split = read_fold(ws, FOLD)
    test, train, fit_cases = set(split.test), set(split.train), set(split.train) | set(split.val)
    assert not test & fit_cases
    pni_pos_train = {r.case_id for r in patch_records(ws, split.train) if r.pni == 1}
    assert set(synthesized["source_case"]) <= pni_pos_train  # only the fold's training PNI+ masks
    assert not set(synthesized["source_case"]) & test
    assert (synthesized["fold"] == FOLD).all()
    for stage in ("autoencoder", "diffusion", "controlnet"):
        art = ws.read_artifact(stage, FOLD)
        used = set(art["trained_on_cases"])
        assert used and used <= fit_cases and not used & test, stage
        assert set(art["test_cases"]) == test
    cache = pd.read_csv(ws.latent_manifest(FOLD), dtype={"case_id": str})
    assert set(cache["case_id"]) <= fit_cases and set(cache.loc[cache["split"] == "train", "case_id"]) <= train


def test_quality_report_written(chain, synthesized):
    from neonet.gen.quality import gen_quality

    ws = chain["ws"]
    ws.gen_quality_report("csv").unlink()
    assert gen_quality(experiment=EXP, runs_dir=ws.runs_dir) == 0  # the standalone verb rewrites the report
    table = pd.read_csv(ws.reports_dir / "gen_quality.csv")
    row = table[table["fold"] == FOLD].iloc[0]
    assert row["n_synthetic"] == len(synthesized)
    assert row["feature_net"].startswith("random-init conv")  # no NeoSeg checkpoint in this workspace
    assert row["segmenter"].startswith("intensity rule")
    for key in ("kid", "kid_real", "ms_ssim_synthetic", "dice_synthetic", "dice_real", "near_copies"):
        assert np.isfinite(row[key]), key
    per = pd.read_csv(ws.reports_dir / f"gen_quality_fold{FOLD}.csv")
    assert len(per) == len(synthesized)
    assert (ws.reports_dir / f"gen_quality_fold{FOLD}.png").stat().st_size > 1000


def test_missing_upstream_names_the_command(tmp_path):
    from neonet.gen.synthesize import synthesize

    write_toy_cohort(tmp_path, experiment=EXP, cases=9, pni_fraction=0.34, seed=1)
    with pytest.raises(MissingUpstreamError, match="neonet cv --config experiments/toy/autoencoder.yaml"):
        build_latent_cache(Workspace(tmp_path / "runs", EXP), 0)
    rc = main(
        [
            "fit",
            "--config",
            str(CONF / "controlnet.yaml"),
            "--data.cases",
            str(tmp_path / "data" / "cases.csv"),
            "--data.runs_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert rc == 2  # MissingUpstreamError is reported as a user error (exit code 2)
    with pytest.raises(MissingUpstreamError, match="split file"):
        synthesize(experiment="nothing_yet", runs_dir=tmp_path / "runs", folds=[0], device="cpu")
