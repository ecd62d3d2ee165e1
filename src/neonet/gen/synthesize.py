"""``neonet synthesize``: PNI+ patches that balance each fold's training set, with full provenance.

For fold k the masks come only from the fold's **training** PNI+ cases (never its inner validation
or test cases); each synthetic patch is conditioned on a randomly augmented copy of one of them
(round-robin over the sources, no two masks identical) until PNI+ : PNI- in the fold's training set
reaches ``ratio``. With ``classes="both"`` PNI- patches follow, conditioned on augmented masks of the
fold's training PNI- cases, ``neg_ratio`` per synthetic PNI+ patch (None: as many as give both classes
the same share of synthetic patches), so that "decoded by the fold's autoencoder" no longer means
PNI+ (docs/method.md, "synthetic confound"). Output::

    <runs_dir>/<experiment>/<name>/fold<k>/      (name: synthetic, or synthetic_<set> with --name)
      images/syn_f<k>_<i>.nii.gz   float32 image in [0, 1] (like the TLCR patches); PNI- ones syn_f<k>_neg<i>
      labels/syn_f<k>_<i>.nii.gz   uint8 augmented conditioning mask (0 bg, 1 liver, 2 shell, 3 tumour)
      manifest.csv                 one row per patch (provenance below); pni = the patch's class (its source
                                   case's), patient_id = source patient
      synth_config.json            provenance (:mod:`neonet.run.provenance`): settings + the checkpoints and the
                                   patch manifest (sha256) the folder was made from

Every sample has its own seed (from ``seed``, fold and index), so a re-run reproduces it and an
interrupted run continues where it stopped: existing patches with the same settings are kept.
Different settings, retrained checkpoints or re-cropped patches need ``--force``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from monai.networks.nets.autoencoderkl import Encoder
from tqdm.auto import tqdm

from neonet.data.nifti import save_nifti
from neonet.data.patches import PATCH_COLUMNS, PatchRecord, patch_records
from neonet.data.splits import read_splits
from neonet.errors import DataError, NeonetError
from neonet.gen.common import label_onehot
from neonet.gen.controlnet import ControlNetModule
from neonet.gen.latents import read_fold
from neonet.gen.mask_aug import MaskAugmentation, augment_mask, mask_digest
from neonet.gen.patch_data import load_patch
from neonet.gen.sampling import SAMPLERS, Denoiser, effective_steps, sample_latents
from neonet.gen.upstream import load_autoencoder, require_checkpoint
from neonet.run.atomic import sha256_file, write_csv
from neonet.run.device import resolve_device
from neonet.run.provenance import UNRECORDED, FileRecord, Provenance, check_current
from neonet.run.reload import load_checkpoint_fold
from neonet.workspace import SYNTHETIC, Workspace, check_synthetic_name

log = logging.getLogger(__name__)

PNI_POSITIVE = 1
PNI_NEGATIVE = 0
#: ``--classes``: synthesise PNI+ patches only (the paper), or PNI+ and PNI- patches.
CLASSES = ("pos", "both")
#: Checkpoints of the record's inputs (``<name> checkpoint``) and the patch manifest the masks come from.
CHECKPOINTS = ("autoencoder", "controlnet", "diffusion")
PATCH_MANIFEST = "patch manifest"
#: Inputs and settings that older records lack: any patch manifest matched then; only PNI+ patches were made.
RECORD_DEFAULTS: dict[str, Any] = {PATCH_MANIFEST: UNRECORDED, "classes": "pos", "neg_ratio": None, "n_synthetic_negative": 0}
#: Columns of ``synthetic/fold<k>/manifest.csv`` (paths relative to the manifest's folder).
MANIFEST_COLUMNS = [
    *PATCH_COLUMNS,
    "status",
    "synthetic",
    "fold",
    "source_case",
    "source_patient",
    "seed",
    "mask_aug",
    "sampler",
    "steps",
    "eta",
    "guidance_scale",
    "conditioning_scale",
    "autoencoder_sha256",
    "diffusion_sha256",
    "controlnet_sha256",
]


def synthetic_count(records: list[PatchRecord], ratio: float = 1.0) -> int:
    """Synthetic PNI+ patches that bring PNI+ : PNI- of ``records`` to ``ratio`` (never negative)."""
    n_pos = sum(1 for r in records if r.pni == 1)
    n_neg = sum(1 for r in records if r.pni == 0)
    return max(0, int(round(float(ratio) * n_neg)) - n_pos)


def synthetic_negative_count(records: list[PatchRecord], n_positive: int, neg_ratio: float | None = 1.0) -> int:
    """Synthetic PNI- patches beside ``n_positive`` synthetic PNI+ ones (``--classes both``).

    ``neg_ratio`` synthetic PNI- per synthetic PNI+ patch; None: as many as give PNI- the same share of
    synthetic patches as PNI+ has (``n_neg * n_positive / n_pos`` of the real counts), so that being
    synthetic says nothing about the label, which leaves the training set at its real class ratio.
    """
    n_pos = sum(1 for r in records if r.pni == 1)
    n_neg = sum(1 for r in records if r.pni == 0)
    if neg_ratio is None:
        return int(round(n_neg * n_positive / n_pos)) if n_pos else 0
    return int(round(float(neg_ratio) * n_positive))


class FoldGenerator:
    """The fold's frozen autoencoder + ControlNet (with its UNet), ready to sample masks into patches."""

    def __init__(self, ws: Workspace, fold: int, device: torch.device) -> None:
        ae_ckpt = require_checkpoint(ws, "autoencoder", fold)
        cn_ckpt = require_checkpoint(ws, "controlnet", fold)
        ae_hash = sha256_file(ae_ckpt)
        self.hashes: dict[str, str | None] = {"autoencoder": ae_hash, "controlnet": sha256_file(cn_ckpt)}
        art = ws.read_artifact("controlnet", fold) or {}
        trained_on = ((art.get("upstream") or {}).get("autoencoder") or {}).get("sha256")
        if trained_on and trained_on != ae_hash:
            raise NeonetError(
                f"fold {fold}: the ControlNet ({cn_ckpt}) was trained on latents of autoencoder sha256 {trained_on[:12]}..., "
                f"but {ae_ckpt} is now {ae_hash[:12]}...; retrain the diffusion and ControlNet stages"
            )
        self.autoencoder = load_autoencoder(ae_ckpt).to(device)
        module = cast(ControlNetModule, load_checkpoint_fold(cn_ckpt, expect=ControlNetModule).module)  # class checked there
        if module.unet is None or module.noise_schedule is None:  # on_load_checkpoint adopts both or raises
            raise NeonetError(f"{cn_ckpt}: the ControlNet checkpoint did not restore its diffusion UNet and noise schedule")
        self.controlnet = module.controlnet.to(device).eval()
        self.unet = module.unet.to(device).eval()
        self.schedule = module.noise_schedule
        self.num_classes = module.num_classes
        self.scale_factor = float(module.scale_factor)
        record = (module.unet_meta or {}).get("diffusion_checkpoint") or {}
        self.hashes["diffusion"] = record.get("sha256")
        current = ws.best_checkpoint("diffusion", fold)
        if current.is_file() and record.get("sha256") and sha256_file(current) != record["sha256"]:
            log.warning(
                "fold %d: %s changed after the ControlNet was trained; sampling uses the UNet stored in the "
                "ControlNet checkpoint (retrain the ControlNet to use the new diffusion model)",
                fold,
                current,
            )
        self.checkpoints = {"autoencoder": str(ae_ckpt), "controlnet": str(cn_ckpt), "diffusion": record.get("path")}
        self.device = device

    @torch.no_grad()
    def generate(
        self,
        mask: np.ndarray,
        seed: int,
        sampler: str,
        steps: int,
        eta: float,
        guidance_scale: float,
        conditioning_scale: float,
        latent_shape: tuple[int, ...],
        pni: int = PNI_POSITIVE,
    ) -> np.ndarray:
        """One image patch (X, Y, Z) in [0, 1] that follows ``mask`` (reproducible from ``seed``); a
        class-conditioned diffusion model is asked for class ``pni``."""
        cond = label_onehot(torch.as_tensor(mask)[None]).to(self.device)
        labels = None
        if self.num_classes is not None:
            labels = torch.full((1,), int(pni), dtype=torch.long, device=self.device)
        elif guidance_scale != 1.0:
            raise NeonetError("guidance_scale != 1 needs a class-conditioned diffusion model (num_classes)")
        denoiser = Denoiser(
            self.unet,
            self.controlnet,
            cond,
            conditioning_scale,
            labels,
            None if self.num_classes is None else int(self.num_classes),
            guidance_scale,
        )
        noise = torch.randn((1, *latent_shape), generator=torch.Generator().manual_seed(int(seed))).to(self.device)
        step_gen = torch.Generator(device=self.device).manual_seed(int(seed) + 1)  # DDPM / eta > 0 noise
        z = sample_latents(denoiser, self.schedule, noise, sampler, steps, eta, generator=step_gen)
        image = self.autoencoder.decode_stage_2_outputs(z / self.scale_factor).clamp(0.0, 1.0)
        return image[0, 0].float().cpu().numpy()


def _what(fold: int, name: str = SYNTHETIC) -> str:
    return f"the synthetic patch folder of fold {int(fold)}" + ("" if name == SYNTHETIC else f" ({name})")


def _record(ws: Workspace, settings: dict[str, Any], gen: FoldGenerator | None) -> Provenance:
    """What the fold's synthetic patches are made from now: settings, checkpoints, patch manifest."""
    inputs = {PATCH_MANIFEST: FileRecord.of(ws.patches_manifest)}
    if gen is not None:
        for name in CHECKPOINTS:
            if gen.checkpoints.get(name) and gen.hashes.get(name):
                inputs[f"{name} checkpoint"] = FileRecord(str(gen.checkpoints[name]), str(gen.hashes[name]))
    return Provenance(settings, inputs)


def _legacy_record(data: dict[str, Any]) -> Provenance:
    """A ``synth_config.json`` of before :mod:`neonet.run.provenance`: the settings beside ``checkpoints``
    (paths) and ``sha256`` (hashes) of the autoencoder, ControlNet and diffusion model."""
    paths, hashes = data.get("checkpoints") or {}, data.get("sha256") or {}
    inputs = {
        f"{name} checkpoint": FileRecord(str(paths.get(name)), str(hashes[name])) for name in CHECKPOINTS if hashes.get(name)
    }
    return Provenance({k: v for k, v in data.items() if k not in ("checkpoints", "sha256")}, inputs)


def _latent_shape(gen: FoldGenerator, patch_shape: tuple[int, ...]) -> tuple[int, ...]:
    factor = 2 ** (len(cast(Encoder, gen.autoencoder.encoder).channels) - 1)  # AutoencoderKL types it as nn.Module
    return (int(gen.autoencoder.latent_channels), *[int(s) // factor for s in patch_shape])


def synthesize_fold(
    ws: Workspace,
    fold: int,
    settings: dict[str, Any],
    aug: MaskAugmentation,
    device: torch.device,
    force: bool = False,
    name: str = SYNTHETIC,
) -> pd.DataFrame:
    """Write the synthetic patches of one fold (to the set ``name``); returns its manifest."""
    split = read_fold(ws, fold)
    train = patch_records(ws, split.train, require_pni=True)
    sources = {PNI_POSITIVE: [r for r in train if r.pni == 1], PNI_NEGATIVE: [r for r in train if r.pni == 0]}
    n_pos = synthetic_count(train, settings["ratio"])
    n_neg = synthetic_negative_count(train, n_pos, settings["neg_ratio"]) if settings["classes"] == "both" else 0
    n_target = n_pos + n_neg
    out = ws.synthetic_dir(fold, name)
    if n_target == 0:
        log.info("fold %d: training set already at PNI+:PNI- >= %s, nothing to synthesize", fold, settings["ratio"])
    for pni, count in ((PNI_POSITIVE, n_pos), (PNI_NEGATIVE, n_neg)):
        if count and not sources[pni]:
            what = "PNI+" if pni == PNI_POSITIVE else "PNI-"
            raise DataError(f"fold {fold}: no {what} training patches to condition on; cannot synthesize {what} patches")
    gen = FoldGenerator(ws, fold, device) if n_target else None
    counts: dict[str, Any] = {"n_synthetic": n_pos}
    if n_neg:
        counts["n_synthetic_negative"] = n_neg
    record = _record(ws, dict(settings, fold=fold, **counts), gen)
    cfg_path = ws.synthetic_config(fold, name)
    stored = (
        None
        if force
        else check_current(cfg_path, record, _what(fold, name), output=out, legacy=_legacy_record, defaults=RECORD_DEFAULTS)
    )
    if force and out.exists():
        shutil.rmtree(out)
    manifest_path = ws.synthetic_manifest(fold, name)
    previous = {}
    if manifest_path.is_file():
        previous = {
            row["case_id"]: row for row in pd.read_csv(manifest_path, dtype=str, keep_default_na=False).to_dict("records")
        }
    if stored is None:  # a current record stays as it is (its hash is an input of the quality report)
        record.write(cfg_path)
    rows: list[dict[str, Any]] = []
    if not n_target:
        write_csv(manifest_path, pd.DataFrame(rows, columns=MANIFEST_COLUMNS))
        return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    assert gen is not None
    needed = sources[PNI_POSITIVE] + (sources[PNI_NEGATIVE] if n_neg else [])
    source_items = {r.case_id: load_patch(r, with_label=True) for r in needed}
    patch_shape = tuple(next(iter(source_items.values()))["label"].shape[1:])
    latent_shape = _latent_shape(gen, patch_shape)
    used = {mask_digest(item["label"][0].numpy()) for item in source_items.values()}
    steps = effective_steps(gen.schedule, settings["sampler"], settings["steps"])
    # PNI+ first, with the ids and seeds they have without --classes both (the same PNI+ patches); then PNI-
    jobs = [(PNI_POSITIVE, i) for i in range(n_pos)] + [(PNI_NEGATIVE, i) for i in range(n_neg)]
    for pni, i in tqdm(jobs, desc=f"synthesize fold {fold}", unit="patch"):
        source = sources[pni][i % len(sources[pni])]
        sid = f"syn_f{fold}_{i:04d}" if pni == PNI_POSITIVE else f"syn_f{fold}_neg{i:04d}"
        image_rel, label_rel = f"images/{sid}.nii.gz", f"labels/{sid}.nii.gz"
        seq = np.random.SeedSequence([int(settings["seed"]), int(fold), i] + ([] if pni == PNI_POSITIVE else [1]))
        rng = np.random.default_rng(seq)
        item = source_items[source.case_id]
        mask, params = augment_mask(item["label"][0].numpy(), item["affine"], rng, aug, avoid=used)
        old = previous.get(sid)
        if old and old.get("source_case") == source.case_id and (out / image_rel).is_file() and (out / label_rel).is_file():
            rows.append(old)  # made by an earlier (interrupted) run with the same settings
            continue
        image = gen.generate(
            mask,
            int(seq.generate_state(1)[0]),
            settings["sampler"],
            settings["steps"],
            settings["eta"],
            settings["guidance_scale"],
            settings["conditioning_scale"],
            latent_shape,
            pni=pni,
        )
        save_nifti(out / image_rel, image.astype(np.float32), item["affine"])
        save_nifti(out / label_rel, mask.astype(np.uint8), item["affine"])
        rows.append(
            {
                "case_id": sid,
                "patient_id": source.patient_id,
                "pni": pni,
                "image": image_rel,
                "label": label_rel,
                "status": "ok",
                "synthetic": True,
                "fold": fold,
                "source_case": source.case_id,
                "source_patient": source.patient_id,
                "seed": int(seq.generate_state(1)[0]),
                "mask_aug": json.dumps(params),
                "sampler": settings["sampler"],
                "steps": steps,
                "eta": settings["eta"],
                "guidance_scale": settings["guidance_scale"],
                "conditioning_scale": settings["conditioning_scale"],
                "autoencoder_sha256": gen.hashes["autoencoder"],
                "diffusion_sha256": gen.hashes["diffusion"],
                "controlnet_sha256": gen.hashes["controlnet"],
            }
        )
        write_csv(manifest_path, pd.DataFrame(rows, columns=MANIFEST_COLUMNS))  # an interrupted run keeps its work
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    write_csv(manifest_path, frame)
    log.info(
        "fold %d: %d synthetic PNI+ patches from %d training PNI+ masks, %d PNI- from %d PNI- masks → %s",
        fold,
        n_pos,
        len(sources[PNI_POSITIVE]),
        n_neg,
        len(sources[PNI_NEGATIVE]) if n_neg else 0,
        out,
    )
    from neonet.run.wandb_run import dataset_artifact, log_dataset_run

    # W&B lineage: the fold's synthetic patches, made by its ControlNet (diffusion model, autoencoder) from the patches
    inputs = {key: rec.to_json() for key, rec in record.inputs.items()}
    named = {} if name == SYNTHETIC else {"name": name}
    log_dataset_run(
        ws,
        "synthesize" if name == SYNTHETIC else f"synthesize_{name}",
        fold,
        lambda: dataset_artifact(ws, manifest_path, name, fold),
        inputs,
        {"experiment": ws.experiment, **settings, "fold": fold, **named},
    )
    return frame


def synthesize(
    experiment: str = "default",
    runs_dir: Path = Path("runs"),
    folds: list[int] | None = None,
    ratio: float = 1.0,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    conditioning_scale: float = 1.0,
    seed: int = 0,
    mask_flip_axes: list[int] = [0],  # noqa: B006 - never mutated; a list reads best in --help
    mask_degrees: float = 10.0,
    mask_scale: float = 0.1,
    mask_translation_mm: float = 3.0,
    mask_elastic_mm: float = 3.0,
    device: str = "auto",
    quality: bool = True,
    force: bool = False,
    classes: str = "pos",
    neg_ratio: float | None = 1.0,
    name: str = SYNTHETIC,
) -> int:
    """Generate PNI+ patches with each fold's ControlNet until the fold's training set is balanced.

    Masks come from the fold's training PNI+ cases only (augmented so no two are identical); the
    synthetic patches go to ``synthetic/fold<k>/`` with a provenance manifest, then a quality report
    (``reports/gen_quality*``) compares them with the fold's real training patches. Every synthetic
    PNI+ patch is decoded by the fold's autoencoder, so "looks decoded" goes with PNI+: ``--classes
    both`` adds PNI- patches from the fold's training PNI- masks (docs/method.md, "synthetic confound").

    Args:
        experiment: experiment name (folder below ``runs_dir``).
        runs_dir: folder holding all experiments.
        folds: folds to synthesize (default: all folds of the split file).
        ratio: target PNI+ : PNI- ratio of each fold's training set (1.0 = 1:1).
        sampler: ``ddim`` (``steps`` steps) or ``ddpm`` (all training timesteps).
        steps: DDIM steps.
        eta: DDIM stochasticity (0 = deterministic given the initial noise).
        guidance_scale: classifier-free guidance towards PNI+ (1 = conditional model only).
        conditioning_scale: factor on the ControlNet residuals (1 = as trained).
        seed: base seed; each patch's seed derives from (seed, fold, index).
        mask_flip_axes: axes each flipped with probability 0.5 in the mask augmentation.
        mask_degrees: maximum in-plane rotation of the mask in degrees.
        mask_scale: maximum relative scaling of the mask.
        mask_translation_mm: maximum in-plane shift of the mask in mm.
        mask_elastic_mm: maximum elastic displacement of the mask in mm (0 disables it).
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        quality: write the quality report after synthesis.
        force: replace synthetic patches made with other settings or checkpoints.
        classes: ``pos`` (PNI+ patches only, the paper's balancing) or ``both`` (PNI+ as with ``pos``,
            then PNI- patches conditioned on augmented masks of the fold's training PNI- cases).
        neg_ratio: with ``classes: both``, synthetic PNI- patches per synthetic PNI+ patch; null: as
            many as give PNI- the same share of synthetic patches as PNI+ (the training set then keeps
            its real class ratio, and being synthetic says nothing about the label).
        name: the synthetic set: ``synthetic`` (read by ``ClsDataModule(use_synthetic=true)``) or
            ``synthetic_<name>`` (another folder, read with ``--data.synthetic_set``), so a variant does
            not replace the default set; its quality report is ``reports/gen_quality_<name>.*``.
    """
    if sampler not in SAMPLERS:
        raise NeonetError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if ratio <= 0:
        raise NeonetError(f"--ratio must be positive, got {ratio}")
    if classes not in CLASSES:
        raise NeonetError(f"--classes must be one of {', '.join(CLASSES)}, got {classes!r}")
    if neg_ratio is not None and neg_ratio < 0:
        raise NeonetError(f"--neg_ratio must be >= 0 or null, got {neg_ratio}")
    check_synthetic_name(name)
    ws = Workspace(runs_dir, experiment)
    if folds is None:
        n = int(read_splits(ws.splits_path)["folds"]) if ws.splits_path.is_file() else 0
        folds = list(range(n))
        if not folds:
            read_fold(ws, 0)  # raises MissingUpstreamError naming the command
    settings: dict[str, Any] = {
        "ratio": float(ratio),
        "sampler": sampler,
        "steps": int(steps),
        "eta": float(eta),
        "guidance_scale": float(guidance_scale),
        "conditioning_scale": float(conditioning_scale),
        "seed": int(seed),
        "classes": classes,
        "neg_ratio": None if classes == "pos" or neg_ratio is None else float(neg_ratio),
    }
    aug = MaskAugmentation(
        tuple(int(a) for a in mask_flip_axes),
        float(mask_degrees),
        float(mask_scale),
        float(mask_translation_mm),
        float(mask_elastic_mm),
    )
    settings["mask_augmentation"] = aug.as_dict()
    settings["mask_augmentation"]["flip_axes"] = list(aug.flip_axes)
    dev = resolve_device(device)
    for k in folds:
        synthesize_fold(ws, int(k), settings, aug, dev, force=force, name=name)
    if quality:
        from neonet.gen.quality import quality_is_current, quality_report

        if quality_is_current(ws, [int(k) for k in folds], synthetic=name):
            log.info(
                "quality report %s is up to date with these synthetic patches; `neonet gen-quality` recomputes it",
                ws.gen_quality_report(synthetic=name),
            )
        else:
            quality_report(ws, [int(k) for k in folds], synthetic=name)
    return 0
