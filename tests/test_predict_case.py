"""``neonet predict-case`` through the real command line on a tiny trained experiment (CPU, seconds).

The fixture experiment (``trained_experiment`` of ``conftest.py``) is tiny and not meant to be accurate:
the phantom cohort, NeoSeg folds 0 and 1 (1 epoch each, tests/conf/seg.yaml), TLCR patches from the
manual masks (tests/conf/crop.yaml) and PattenNet folds 0 and 1 (tests/conf/pattennet.yaml, a fake fold
autoencoder). Fold 2 is left untrained on purpose (the missing-fold error).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from neonet.data.base import FoldDataModule
from neonet.run.cli import main
from neonet.workspace import Workspace
from test_cls_fixtures import CONF, one_thread, write_fake_autoencoder  # noqa: F401

FOLDS = "[0,1]"


@pytest.fixture(scope="module")
def experiment(trained_experiment: dict) -> dict:
    """Seg folds 0-1, manual-mask patches and PattenNet folds 0-1 of experiment ``test`` (``conftest.py``)."""
    return trained_experiment


def run(image: Path, experiment: dict, out: Path, *extra: str) -> dict:
    args = ["predict-case", str(image), "--experiment", "test", "--runs_dir", str(experiment["runs"]), "--out", str(out)]
    assert main([*args, "--folds", FOLDS, *extra]) == 0
    return json.loads((out / "prediction.json").read_text(encoding="utf-8"))


def case_files(experiment: dict, case_id: str) -> tuple[Path, Path]:
    row = experiment["cases"].loc[case_id]
    return experiment["root"] / row["image"], experiment["root"] / row["label"]


def assert_input_space(path: Path, image: Path) -> nib.Nifti1Image:
    out, src = nib.load(path), nib.load(image)
    assert out.shape == src.shape[:3]
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
    return out


def patch_coordinates(image: nib.Nifti1Image, patch_affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Patch voxel coordinates (N, 3) of image voxels (N, 3), through world space."""
    to_patch = np.linalg.inv(patch_affine) @ image.affine
    return voxels @ to_patch[:3, :3].T + to_patch[:3, 3]


def test_phantom_case_with_its_mask_matches_crop_and_ensembles_the_folds(experiment: dict, tmp_path: Path) -> None:
    """With the manual mask, TLCR gives the very patch `neonet crop` made; probabilities per fold and mean."""
    image, label = case_files(experiment, "phantom_003")
    result = run(image, experiment, tmp_path, "--mask", str(label))
    assert result["tumor_found"] is True and result["n_tumors"] >= 1 and result["tumor_volume_ml"] > 0
    probs = result["pni_probability_per_fold"]
    assert sorted(probs) == ["0", "1"] and all(0.0 <= p <= 1.0 for p in probs.values())
    assert result["pni_probability"] == pytest.approx(np.mean(list(probs.values())))
    assert result["classifier"]["folds"] == [0, 1] and result["saliency"]["layer"] == "attention.1"

    # same crop as `neonet crop` (manual masks) for this case: box and patch voxels
    row = pd.read_csv(experiment["ws"].patches_manifest).set_index("case_id").loc["phantom_003"]
    assert result["crop_box"]["start"] == [int(row[f"box_start_{a}"]) for a in "xyz"]
    assert result["crop_box"]["stop"] == [int(row[f"box_stop_{a}"]) for a in "xyz"]
    ours, crops = nib.load(tmp_path / "patch_image.nii.gz"), nib.load(experiment["ws"].patches_dir / row["image"])
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(crops.dataobj))
    assert result["crop"]["liver_level"] == 0.75  # normalised to the liver as the training patches were
    assert result["crop"]["intensity_scale"] == pytest.approx(float(row["intensity_scale"]), rel=1e-5)
    np.testing.assert_allclose(ours.affine, crops.affine, atol=1e-6)

    seg = assert_input_space(tmp_path / "segmentation.nii.gz", image)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), np.asarray(nib.load(label).dataobj))
    saliency = assert_input_space(tmp_path / "saliency.nii.gz", image)
    values = np.asarray(saliency.dataobj)
    assert values.min() >= 0.0 and 0.0 < values.max() <= 1.0 + 1e-6
    size = np.asarray(ours.shape[:3])
    nonzero = patch_coordinates(saliency, ours.affine, np.argwhere(values > 0))
    assert np.all(nonzero >= -0.5 - 1e-4) and np.all(nonzero <= size - 0.5 + 1e-4)  # zero outside the crop box
    tumour = patch_coordinates(saliency, ours.affine, np.argwhere(np.asarray(seg.dataobj) == 2).mean(axis=0, keepdims=True))
    assert np.all(tumour >= 0) and np.all(tumour <= size - 1)  # world-space consistency: the box is on the tumour
    start, stop = result["crop_box_input_voxels"]["start"], result["crop_box_input_voxels"]["stop"]
    outside = np.ones(values.shape, bool)
    outside[tuple(slice(a, b) for a, b in zip(start, stop))] = False
    assert not values[outside].any()
    assert (tmp_path / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_phantom_case_through_the_neoseg_ensemble(experiment: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image, _ = case_files(experiment, "phantom_000")
    result = run(image, experiment, tmp_path)
    seg = assert_input_space(tmp_path / "segmentation.nii.gz", image)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2}
    assert seg.get_data_dtype() == np.uint8
    assert result["segmentation"]["source"] == "neoseg" and result["segmentation"]["folds"] == [0, 1]
    assert len(result["segmentation"]["checkpoints"]) == 2
    assert result["message"] and result["message"] in capsys.readouterr().out
    if result["tumor_found"]:
        assert sorted(result["pni_probability_per_fold"]) == ["0", "1"]
        assert_input_space(tmp_path / "saliency.nii.gz", image)
    else:
        assert result["pni_probability"] is None and not (tmp_path / "saliency.nii.gz").exists()


def test_no_tumour_says_so_and_still_writes_the_mask(experiment: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image, label = case_files(experiment, "phantom_001")
    src = nib.load(label)
    liver_only = np.where(np.asarray(src.dataobj) > 0, 1, 0).astype(np.uint8)
    mask = tmp_path / "liver_only.nii.gz"
    nib.save(nib.Nifti1Image(liver_only, src.affine), str(mask))
    out = tmp_path / "out"
    (out / "saliency.nii.gz").parent.mkdir(parents=True)
    (out / "saliency.nii.gz").write_text("stale file of an earlier run")
    result = run(image, experiment, out, "--mask", str(mask))
    assert result["tumor_found"] is False and result["pni_probability"] is None
    assert result["pni_probability_per_fold"] == {} and result["crop_box"] is None
    assert "NO TUMOUR FOUND" in result["message"] and "NO TUMOUR FOUND" in capsys.readouterr().out
    assert_input_space(out / "segmentation.nii.gz", image)
    assert not (out / "saliency.nii.gz").exists() and (out / "overlay.png").is_file()


def test_real_sample_mask_in_the_input_space(experiment: dict, real_samples: Path, tmp_path: Path) -> None:
    """A non-RAS float64 scan: the mask (and saliency, if a tumour is found) have its shape and affine."""
    image = real_samples / "chaos_t2spir" / "image_1.nii.gz"
    result = run(image, experiment, tmp_path)
    seg = assert_input_space(tmp_path / "segmentation.nii.gz", image)
    assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(nib.load(image).affine) != ("R", "A", "S")
    assert isinstance(result["tumor_found"], bool) and result["message"]
    if result["tumor_found"]:
        assert_input_space(tmp_path / "saliency.nii.gz", image)


def test_missing_folds_name_the_folder_and_the_command(experiment: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image, _ = case_files(experiment, "phantom_000")
    base = ["predict-case", str(image), "--experiment", "test", "--runs_dir", str(experiment["runs"]), "--out", str(tmp_path)]
    assert main(base) == 2  # default: every fold of the experiment, and fold 2 was never trained
    err = capsys.readouterr().err
    assert str(experiment["ws"].stage_dir("seg", 2)) in err and "neonet cv --config" in err and "--folds [0,1]" in err
    assert main([*base, "--folds", FOLDS, "--classifier", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert str(experiment["ws"].stage_dir("resnet18", 0)) in err and "--classifier none" in err
    assert not (tmp_path / "prediction.json").exists()


def test_classifier_none_stops_after_tlcr(experiment: dict, tmp_path: Path) -> None:
    image, label = case_files(experiment, "phantom_002")
    result = run(image, experiment, tmp_path, "--mask", str(label), "--classifier", "none")
    assert result["tumor_found"] is True and result["classifier"] is None and result["pni_probability"] is None
    assert result["crop_box"]["stop"] == [a + p for a, p in zip(result["crop_box"]["start"], result["crop"]["patch_size"])]
    assert (tmp_path / "patch_image.nii.gz").is_file() and not (tmp_path / "saliency.nii.gz").exists()


def test_help_lists_the_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict-case", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert all(opt in text for opt in ("--image", "--experiment", "--classifier", "--folds", "--mask", "--device"))


@pytest.mark.slow
def test_trained_neoseg_finds_the_tumour_of_a_new_non_ras_case(tmp_path: Path) -> None:
    """End to end without a mask: a NeoSeg fold trained long enough to find tumours (~30 s on 2 CPUs)."""
    from neonet.data.phantom import synth

    cases = synth(
        tmp_path / "data",
        cases=12,
        seed=1,
        pni_fraction=0.5,
        shape=(48, 48, 16),
        spacing=(7.0, 7.0, 12.0),
        tumor_radius_mm=(28.0, 36.0),
        orientation="LPS",
    )
    runs = tmp_path / "runs"
    data = [f"--data.cases={cases}", f"--data.runs_dir={runs}"]
    assert (
        main(
            [
                "fit",
                "--config",
                str(CONF / "seg.yaml"),
                *data,
                "--trainer.max_epochs=40",
                "--trainer.check_val_every_n_epoch=10",
                "--data.augment=false",
                "--model.init_args.optimizer.init_args.lr=0.01",
                "--trainer.enable_progress_bar=false",
            ]
        )
        == 0
    )
    assert main(["crop", "--config", str(CONF / "crop.yaml"), f"--cases={cases}", f"--runs_dir={runs}", "--source=manual"]) == 0
    ws = Workspace(runs, "test")
    dm = FoldDataModule(str(cases), experiment="test", runs_dir=str(runs), fold=0, folds=3)
    write_fake_autoencoder(ws, 0, train_cases=list(dm.split.train))
    assert main(["fit", "--config", str(CONF / "pattennet.yaml"), *data, "--data.experiment=test"]) == 0

    case = dm.split.test[0]  # held out from both fold-0 models
    image, label = tmp_path / "data" / "images" / f"{case}.nii.gz", tmp_path / "data" / "labels" / f"{case}.nii.gz"
    out = tmp_path / "out"
    assert (
        main(["predict-case", str(image), "--experiment", "test", "--runs_dir", str(runs), "--folds", "[0]", "--out", str(out)])
        == 0
    )
    result = json.loads((out / "prediction.json").read_text(encoding="utf-8"))
    assert result["tumor_found"] is True and list(result["pni_probability_per_fold"]) == ["0"]
    seg = assert_input_space(out / "segmentation.nii.gz", image)
    assert nib.aff2axcodes(seg.affine) == ("L", "P", "S")
    pred, truth = np.asarray(seg.dataobj) == 2, np.asarray(nib.load(label).dataobj) == 2
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.5  # tumour Dice of the trained fold
    start, stop = result["crop_box_input_voxels"]["start"], result["crop_box_input_voxels"]["stop"]
    centre = np.argwhere(truth).mean(axis=0)
    assert all(a <= c < b for a, c, b in zip(start, centre, stop))
    values = np.asarray(assert_input_space(out / "saliency.nii.gz", image).dataobj)
    outside = np.ones(values.shape, bool)
    outside[tuple(slice(a, b) for a, b in zip(start, stop))] = False
    assert values.max() > 0 and not values[outside].any()


# ----------------------------------------------------------------------------- saliency units
def test_grad_cam_layers_and_range() -> None:
    from monai.networks.nets import AutoencoderKL

    from neonet.cls.saliency import SaliencyUnavailable, default_target_layer, grad_cam
    from neonet.nets import AutoencoderKLEncoder, PattenNet, ResNet18Classifier

    def encoder() -> AutoencoderKLEncoder:
        ae = AutoencoderKL(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            channels=(8, 8),
            latent_channels=3,
            num_res_blocks=1,
            attention_levels=(False, False),
            norm_num_groups=4,
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        )
        return AutoencoderKLEncoder(ae)

    torch.manual_seed(0)
    for blocks, layer in ((2, "attention.1"), (1, "attention.0")):
        net = PattenNet(encoder(), num_blocks=blocks, hidden=8)
        assert default_target_layer(net) == layer
        heat, used = grad_cam(net, torch.rand(1, 1, 16, 16, 8))
        assert used == layer and heat.shape == (16, 16, 8) and heat.min() >= 0 and heat.max() <= 1
    no_blocks = PattenNet(encoder(), num_blocks=0, hidden=8)  # only the frozen encoder before the head
    assert default_target_layer(no_blocks) == "encoder"
    with pytest.raises(SaliencyUnavailable, match="no gradient reaches layer 'encoder'"):
        grad_cam(no_blocks, torch.rand(1, 1, 16, 16, 8))
    assert grad_cam(PattenNet(encoder(), num_blocks=0, freeze_encoder=False), torch.rand(1, 1, 16, 16, 8))[1] == "encoder"
    resnet = ResNet18Classifier()
    assert default_target_layer(resnet) == "net.layer4.1.conv2"
    heat, _ = grad_cam(resnet, torch.rand(1, 1, 16, 16, 8), layer="net.layer4")
    assert heat.shape == (16, 16, 8)
    with pytest.raises(ValueError, match="not found"):
        grad_cam(resnet, torch.rand(1, 1, 16, 16, 8), layer="nope")


def test_patch_to_image_is_zero_outside_the_patch_and_exact_on_a_shared_grid() -> None:
    from neonet.cls.saliency import patch_bounds_in_image, patch_to_image
    from neonet.seg.tlcr import patch_affine

    image_affine = np.diag([2.0, 2.0, 3.0, 1.0])
    image_affine[:3, 3] = (-10, 5, 7)
    patch = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32) + 0.1
    p_affine = patch_affine(image_affine, (2, -1, 1))  # partly outside the image along y
    out = patch_to_image(patch, p_affine, (10, 10, 6), image_affine)
    np.testing.assert_allclose(out[2:6, 0:4, 1:4], patch[:, 1:, :], rtol=1e-6)
    out[2:6, 0:4, 1:4] = 0
    assert not out.any()
    assert patch_bounds_in_image(patch.shape, p_affine, (10, 10, 6), image_affine) == ((2, 0, 1), (6, 4, 4))
    # a flipped (LPS-like) image grid of the same voxels gives the flipped map
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = (9, 9, 0)
    flipped = patch_to_image(patch, p_affine, (10, 10, 6), image_affine @ flip)
    np.testing.assert_allclose(flipped[::-1, ::-1][2:6, 0:4, 1:4], patch[:, 1:, :], rtol=1e-6)
