"""How much of the phantom's PNI signal survives NeoSeg and TLCR (prints and writes JSON; never asserts).

A diagnostic for the phantom cohort, independent of any classifier:

1. **Cuff absorption**: each PNI+ case's PNI- twin is regenerated from the same seed (the phantom
   draws every random number whatever the PNI status), so the perineural cuff is exactly the set of
   voxels the PNI+ image is darker than its twin by more than ``--cuff_drop`` of the liver
   intensity. Reported: the share of those voxels the out-of-fold NeoSeg mask labels tumour (a cuff
   labelled tumour moves the peritumoral shell past it).
2. **Hand-made score on the TLCR patches**: the fraction of voxels in a region of the label patch
   (shell; shell + tumour) whose intensity, relative to the median liver voxel of the same patch,
   lies in ``--band`` (the cuff sits halfway between tumour and liver). Its AUC over all patches is
   an upper bound of sorts for what a classifier can read from these patches with this much data;
   a classifier far below it is the bottleneck, not the masks. Also reported in absolute intensity.
3. **A learned model with the right inductive bias**: an L2 logistic regression on the 14-bin
   intensity histogram (0 to 1.4, liver-relative or absolute) of the shell + tumour voxels, trained
   on each fold's training and inner-validation patients and scored on its test patients (the same
   ``splits.json`` folds as PattenNet), pooled out-of-fold AUC. Unlike the hand-made band it learns
   which intensities matter from the fold's own training cases, so it shows what a small model can
   learn from these patches with this much data.
4. **The same model on the frozen autoencoder's features** (when each fold's autoencoder is trained):
   each fold's ``best.ckpt`` encodes every patch; per channel of a tapped map (``--taps``, e.g.
   ``features`` and the full-resolution ``level0``), a 14-bin histogram over the shell + tumour
   cells with bin edges at the fold's training quantiles; L2 logistic regression as in 3. Read
   against 3: what the frozen features keep of the intensity signal, before any PattenNet training.
   Second kind (``encoder-region-histogram``): the ``pattennet_hist`` variant's pooling, untrained (each
   patch's channels standardised over its own shell + tumour, 14 fixed triangular bins), same regression.
   Third kind (``encoder-global-average``): the paper's global average pooling (``pattennet``), one value
   per channel over the whole patch, same regression.
5. **Chance associations of the cohort**: the AUC of each nuisance parameter the phantom drew
   independently of PNI (tumour volume and intensity, liver volume, nerve gap; from
   ``phantom_info.csv``) against the labels. In a finite cohort some of them differ between the
   classes by chance, and a classifier that learns such a difference in the training folds carries
   it to the test folds of the *same* cohort. On a ``--strength 0`` cohort this, not leakage, is
   what moves a cross-validated AUC away from 0.5: read a null AUC next to these.

Usage (after ``make demo``, or after ``neonet crop`` in an experiment with a phantom cohort)::

    python benchmarks/pni_signal_probe.py --experiment demo --cases 72 --strength 2 --tumor_radius_mm 20 30

The cohort arguments must be the ones ``neonet synth`` was given (see ``DEMO_SYNTH`` in the Makefile).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import yaml
from torchmetrics.functional.classification import binary_auroc

from neonet.cls.encoder import load_encoder_checkpoint
from neonet.data.cases import LIVER, TUMOR
from neonet.data.phantom import cohort_plan, make_case
from neonet.nets import AutoencoderKLEncoder, SoftHistogramPool3d
from neonet.seg.tlcr import PATCH_LIVER, PATCH_SHELL, PATCH_TUMOR


def absorption(runs: Path, args: argparse.Namespace) -> dict[str, float]:
    """Share of each PNI+ case's cuff voxels that the out-of-fold NeoSeg mask calls tumour."""
    shares = []
    for item in cohort_plan(args.cases, args.seed, args.pni_fraction, args.matched):
        pred_path = runs / "seg" / "predictions" / f"{item.case_id}.nii.gz"
        if not item.pni or not pred_path.exists():
            continue
        common = dict(strength=args.strength, tumor_radius_mm=tuple(args.tumor_radius_mm), noise_rng=item.noise_seed)
        image_pos, label, _, _ = make_case(item.seed, 1, **common)
        image_neg, _, _, _ = make_case(item.seed, 0, **common)
        cuff = (image_neg - image_pos) > args.cuff_drop * np.median(image_neg[label == LIVER])
        pred = np.asarray(nib.load(pred_path).dataobj)
        if pred.shape != cuff.shape:
            raise SystemExit(f"{pred_path}: shape {pred.shape} is not the phantom's {cuff.shape}; pass the synth arguments")
        shares.append(float((pred[cuff] == TUMOR).mean()) if cuff.any() else 0.0)
    if not shares:
        return {}
    return {"cases": len(shares), "cuff_absorbed_mean": float(np.mean(shares)), "cuff_absorbed_median": float(np.median(shares))}


def load_patches(patches: Path) -> tuple[pd.DataFrame, list[tuple[np.ndarray, np.ndarray, float]]]:
    """The ``ok`` rows of the patch manifest and, per row, (image, label, median liver intensity)."""
    manifest = pd.read_csv(patches / "manifest.csv", dtype={"case_id": str})
    manifest = manifest[manifest["status"] == "ok"].reset_index(drop=True)
    items = []
    for row in manifest.itertuples():
        image = np.asarray(nib.load(patches / row.image).dataobj, np.float32)
        label = np.asarray(nib.load(patches / row.label).dataobj).round()
        liver = image[label == PATCH_LIVER]
        items.append((image, label, float(np.median(liver)) if liver.size else float(np.median(image[label > 0]))))
    return manifest, items


def band_scores(
    manifest: pd.DataFrame, items: list[tuple[np.ndarray, np.ndarray, float]], band: tuple[float, float]
) -> dict[str, float]:
    """AUC of the in-band voxel fraction per region (liver-relative and absolute intensity)."""
    regions = {"shell": (PATCH_SHELL,), "shell+tumour": (PATCH_SHELL, PATCH_TUMOR)}
    scores: dict[str, list[float]] = {f"{name} {kind}": [] for name in regions for kind in ("relative", "absolute")}
    for image, label, ref in items:
        for name, values in regions.items():
            inside = image[np.isin(label, values)]
            for kind, scale in (("relative", ref), ("absolute", 1.0)):
                v = inside / scale
                scores[f"{name} {kind}"].append(float(((v > band[0]) & (v < band[1])).mean()) if v.size else 0.0)
    y = torch.tensor(manifest["pni"].tolist(), dtype=torch.long)
    out = {"patches": int(len(y)), "source": str(manifest["source"].iloc[0]) if len(manifest) else ""}
    for key, values in scores.items():
        out[f"auc {key}"] = float(binary_auroc(torch.as_tensor(values), y))
    return out


def ridge_oof(
    features_of: Callable[[dict, list[int]], torch.Tensor], y: torch.Tensor, row_of: dict[str, int], folds: list[dict], l2: float
) -> float:
    """Pooled out-of-fold AUC of an L2 logistic regression fitted on each fold's train + val rows.

    ``features_of(split, fit_rows)`` gives the fold's feature matrix, one row per case (it may
    depend on the fold: its encoder, its bin edges).
    """
    scores = torch.zeros(len(y))
    for split in folds:
        fit = [row_of[c] for c in split["train"] + split["val"] if c in row_of]
        test = [row_of[c] for c in split["test"] if c in row_of]
        feats = features_of(split, fit)
        mu, sd = feats[fit].mean(0), feats[fit].std(0) + 1e-6
        x = (feats - mu) / sd
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x[fit] @ w + b, y[fit]) + l2 * (w**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            scores[test] = x[test] @ w + b
    return float(binary_auroc(scores, y.long()))


def histogram_cv(
    manifest: pd.DataFrame,
    items: list[tuple[np.ndarray, np.ndarray, float]],
    splits_path: Path,
    bins: int = 14,
    top: float = 1.4,
    l2: float = 0.1,
) -> dict[str, float]:
    """Pooled out-of-fold AUC of a logistic regression on shell + tumour intensity histograms."""
    feats: dict[str, list[torch.Tensor]] = {"relative": [], "absolute": []}
    for image, label, ref in items:
        inside = torch.from_numpy(image[np.isin(label, (PATCH_SHELL, PATCH_TUMOR))])
        for kind, scale in (("relative", ref), ("absolute", 1.0)):
            v = (inside / scale).clamp(0, top)
            feats[kind].append(torch.histc(v, bins, 0, top) / max(v.numel(), 1))
    y = torch.tensor(manifest["pni"].tolist(), dtype=torch.float32)
    row_of = {c: i for i, c in enumerate(manifest["case_id"])}
    folds = json.loads(splits_path.read_text())["splits"]
    return {
        f"oof auc histogram-logistic {kind}": ridge_oof(lambda _split, _fit, x=torch.stack(rows): x, y, row_of, folds, l2)
        for kind, rows in feats.items()
    }


def encoder_cv(
    manifest: pd.DataFrame,
    items: list[tuple[np.ndarray, np.ndarray, float]],
    runs: Path,
    config: Path,
    taps: list[str],
    bins: int = 14,
    l2: float = 0.5,
) -> dict[str, float]:
    """Pooled out-of-fold AUC of logistic regressions on histograms of frozen encoder maps (two kinds)."""
    from monai.networks.nets import AutoencoderKL

    init = yaml.safe_load(config.read_text())["model"]["init_args"]["autoencoder"]["init_args"]
    images = torch.from_numpy(np.stack([im for im, _, _ in items]))[:, None].float()
    region = torch.from_numpy(np.stack([np.isin(lb, (PATCH_SHELL, PATCH_TUMOR)) for _, lb, _ in items]))[:, None].float()
    y = torch.tensor(manifest["pni"].tolist(), dtype=torch.float32)
    row_of = {c: i for i, c in enumerate(manifest["case_id"])}
    folds = json.loads((runs / "splits.json").read_text())["splits"]
    out: dict[str, float] = {}
    for tap in taps:
        maps_of: dict[int, torch.Tensor] = {}

        def encode(fold: int, tap: str = tap) -> torch.Tensor:
            if fold not in maps_of:
                encoder = AutoencoderKLEncoder(AutoencoderKL(**init), tap=tap).eval()
                load_encoder_checkpoint(encoder, runs / "autoencoder" / f"fold{fold}" / "checkpoints" / "best.ckpt")
                with torch.no_grad():
                    maps_of[fold] = torch.cat([encoder(images[i : i + 8]) for i in range(0, len(images), 8)])
            return maps_of[fold]

        def quantile_histograms(split: dict, fit: list[int]) -> torch.Tensor:
            maps = encode(split["fold"])
            cells = torch.nn.functional.adaptive_max_pool3d(region, maps.shape[2:]) > 0  # cells touching the region
            values = [m[:, c[0]] for m, c in zip(maps, cells)]  # (C, cells) per patch
            fitted = torch.cat([values[i] for i in fit], dim=1)
            gen = torch.Generator().manual_seed(0)
            sample = fitted[:, torch.randperm(fitted.shape[1], generator=gen)[:100_000]]
            edges = torch.quantile(sample, torch.linspace(0, 1, bins + 1)[1:-1], dim=1).T.contiguous()  # (C, bins - 1)
            return torch.stack(
                [
                    torch.stack(
                        [
                            torch.bincount(torch.bucketize(v[ch], edges[ch]), minlength=bins).float() / max(v.shape[1], 1)
                            for ch in range(v.shape[0])
                        ]
                    ).flatten()
                    for v in values
                ]
            )

        def region_histograms(split: dict, _fit: list[int]) -> torch.Tensor:
            # PattenNet's pooling (hist_norm="region") with its initial bins, untrained: each patch's
            # channels standardised over its own region, 14 triangular bins from -2 to +2 sd
            maps = encode(split["fold"])
            weights = torch.nn.functional.adaptive_avg_pool3d(region, maps.shape[2:])
            with torch.no_grad():
                return SoftHistogramPool3d(maps.shape[1], bins, norm="region")(maps, weights)

        def global_averages(split: dict, _fit: list[int]) -> torch.Tensor:
            return encode(split["fold"]).mean(dim=(2, 3, 4))  # the paper head's pooling, before its attention blocks

        out[f"oof auc encoder-histogram-logistic {tap}"] = ridge_oof(quantile_histograms, y, row_of, folds, l2)
        out[f"oof auc encoder-global-average-logistic {tap}"] = ridge_oof(global_averages, y, row_of, folds, l2)
        out[f"oof auc encoder-region-histogram-logistic {tap}"] = ridge_oof(region_histograms, y, row_of, folds, l2)
    return out


NUISANCE = ("tumour_volume_ml", "tumour_intensity", "tumour_mean_image", "liver_volume_ml", "nerve_gap_mm")


def nuisance_aucs(data_dir: Path) -> dict[str, float]:
    """AUC against PNI of each nuisance parameter in ``phantom_info.csv`` (ranks, so any scale works)."""
    info_path, cases_path = data_dir / "phantom_info.csv", data_dir / "cases.csv"
    if not info_path.is_file() or not cases_path.is_file():
        return {}
    frame = pd.read_csv(info_path, dtype={"case_id": str}).merge(
        pd.read_csv(cases_path, dtype={"case_id": str})[["case_id", "pni"]], on="case_id"
    )
    y = torch.tensor(frame["pni"].tolist(), dtype=torch.long)
    out = {}
    for column in NUISANCE:
        if column in frame:
            ranks = torch.tensor(frame[column].astype(float).rank().to_numpy() / len(frame), dtype=torch.float32)
            out[f"auc {column}"] = float(binary_auroc(ranks, y))
    return out


def main() -> None:
    """Parse the arguments, measure, print and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--runs_dir", type=Path, default=Path("runs"))
    parser.add_argument("--cases", type=int, default=72, help="the cohort's `neonet synth --cases`")
    parser.add_argument("--seed", type=int, default=0, help="the cohort's `neonet synth --seed`")
    parser.add_argument("--pni_fraction", type=float, default=0.35)
    parser.add_argument("--strength", type=float, default=2.0)
    parser.add_argument("--matched", type=int, default=0, help="the cohort's `neonet synth --matched`")
    parser.add_argument("--tumor_radius_mm", type=float, nargs=2, default=(20.0, 30.0))
    parser.add_argument(
        "--cuff_drop", type=float, default=0.15, help="cuff = PNI- twin minus PNI+ image above this share of liver"
    )
    parser.add_argument("--band", type=float, nargs=2, default=(0.6, 0.8), help="intensity band, relative to liver")
    parser.add_argument(
        "--taps", nargs="*", default=["features", "level0"], help="encoder maps for the frozen-feature probe (none: skip it)"
    )
    parser.add_argument(
        "--autoencoder_config",
        type=Path,
        default=None,
        help="the autoencoder stage's config (default: experiments/<experiment>/autoencoder.yaml)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default: <runs>/<experiment>/reports/pni_signal_probe.json)"
    )
    args = parser.parse_args()
    runs = args.runs_dir / args.experiment
    manifest, items = load_patches(runs / "patches")
    result = {
        "absorption": absorption(runs, args),
        "band": list(args.band),
        "scores": band_scores(manifest, items, tuple(args.band)),
    }
    if (runs / "splits.json").is_file():
        result["learned"] = histogram_cv(manifest, items, runs / "splits.json")
        config = args.autoencoder_config or Path("experiments") / args.experiment / "autoencoder.yaml"
        if args.taps and (runs / "autoencoder" / "fold0" / "checkpoints" / "best.ckpt").is_file() and config.is_file():
            result["learned"].update(encoder_cv(manifest, items, runs, config, args.taps))
    result["nuisance"] = nuisance_aucs(runs / "data")
    for key, value in {**result["absorption"], **result["scores"], **result.get("learned", {}), **result["nuisance"]}.items():
        print(f"{key:>28}: {value:.3f}" if isinstance(value, float) else f"{key:>28}: {value}")
    out = args.out or runs / "reports" / "pni_signal_probe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
