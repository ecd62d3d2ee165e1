"""Is a NeoSeg miss a matter of intensity scale or of tissue contrast? (prints and writes JSON; never asserts)

A diagnostic for one held-out scan and the fold that did not train on it (e.g. CHAOSMR_15, whose liver
is darker than its neighbours in T2-SPIR, and CHAOS fold 3). The fold's ``best.ckpt`` segments the
preprocessed scan (NeoSeg's own preprocessing: RAS, the fold's spacing, percentiles to [0, 1], padding)
after two kinds of change, and the liver Dice on that grid is measured against the manual mask:

1. **Monotone** (``--gammas``): the scaled image raised to a power ``g``; ``g < 1`` brightens a dark liver
   and everything else of its brightness alike, as any normalisation or gamma augmentation does. If no
   ``g`` rescues the scan, neither will a normalisation or a wider gamma range in training.
2. **Liver contrast** (``--liver_gains``): the intensity inside the (slightly smoothed) *manual* liver mask
   multiplied by a gain, raising the liver against its neighbours. It reads the label, so it is no method,
   only a measure of how much of the miss the liver's contrast to its neighbours explains.

Also written: the median intensity, after NeoSeg's scaling, of the liver and of the other labelled organs
(kidneys, spleen) of every scan in the cohort, whose ratio is the contrast in question.

Usage (after ``make chaos``)::

    python benchmarks/seg_contrast_probe.py --experiment chaos --fold 3 --case CHAOSMR_15

Writes ``<runs>/<experiment>/reports/seg_contrast_probe.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from neonet.data.cases import LIVER, TUMOR, LabelMap, read_cases
from neonet.run.atomic import write_json
from neonet.run.reload import load_checkpoint_fold
from neonet.seg.datamodule import seg_preprocessing
from neonet.workspace import Workspace


def liver_dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Dice of two boolean masks."""
    return float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))


def main() -> None:
    """Parse the arguments, measure, print and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="chaos")
    parser.add_argument("--runs_dir", type=Path, default=Path("runs"))
    parser.add_argument("--fold", type=int, default=3, help="a fold whose test set holds --case")
    parser.add_argument("--case", default="CHAOSMR_15")
    parser.add_argument("--gammas", type=float, nargs="*", default=[1.0, 1 / 1.4, 1 / 1.9])
    parser.add_argument("--liver_gains", type=float, nargs="*", default=[1.0, 1.6, 2.4])
    args = parser.parse_args()
    torch.set_num_threads(1)

    ws = Workspace(args.runs_dir, args.experiment)
    fold = load_checkpoint_fold(ws.best_checkpoint("seg", args.fold))
    module: Any = fold.module.eval()
    data: Any = fold.data
    label_map = LabelMap.from_args(fold.cfg["data"]["init_args"])
    transform = seg_preprocessing(data.spacing, data.divisible, label_map)
    cases = {c.case_id: c for c in read_cases(data.cases_csv)}

    # the kidneys and spleen (CHAOS labels 2-4) read as the second class here, only to measure their intensity
    organ_map = LabelMap(liver=list(label_map.liver), tumor=list(label_map.other), other=[])
    organ_transform = seg_preprocessing(data.spacing, data.divisible, organ_map)
    organs = {}
    for cid, case in cases.items():
        item = organ_transform({"image": str(case.image), "label": str(case.label)})
        image, label = item["image"].as_tensor()[0], item["label"].as_tensor()[0]
        liver, other = float(image[label == LIVER].median()), float(image[label == TUMOR].median())
        organs[cid] = {"liver_median": liver, "other_organs_median": other, "ratio": liver / other}
    item = transform({"image": str(cases[args.case].image), "label": str(cases[args.case].label)})
    x, truth = item["image"].as_tensor()[None], item["label"].as_tensor()[0] >= LIVER

    def segment(image: torch.Tensor) -> float:
        with torch.inference_mode():
            return liver_dice(module.infer(image).argmax(1)[0] >= LIVER, truth)

    gamma = {f"{g:.3f}": segment(x.clamp(0, 1) ** g) for g in args.gammas}
    soft = torch.as_tensor(ndimage.gaussian_filter(truth.numpy().astype(np.float32), (1.0, 1.0, 0.5)))
    gains = {f"{f:.2f}": segment((x * (1 + (f - 1) * soft)).clamp(0, 1)) for f in args.liver_gains}
    result = {
        "experiment": args.experiment,
        "fold": args.fold,
        "case": args.case,
        "checkpoint": str(ws.best_checkpoint("seg", args.fold)),
        "dice_liver_by_gamma": gamma,
        "dice_liver_by_liver_gain": gains,
        "organs": organs,
    }
    out = write_json(ws.reports_dir / "seg_contrast_probe.json", result)
    for cid, o in organs.items():
        print(f"{cid}: liver {o['liver_median']:.3f}, kidneys+spleen {o['other_organs_median']:.3f}, ratio {o['ratio']:.2f}")
    print(f"{args.case}, fold {args.fold}: liver Dice on the network's grid")
    print("  image ** g:       " + "  ".join(f"g {k}: {v:.3f}" for k, v in gamma.items()))
    print("  liver x gain:     " + "  ".join(f"x{k}: {v:.3f}" for k, v in gains.items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
