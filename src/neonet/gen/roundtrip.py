"""Real patches through the fold's autoencoder (encode, decode): "decoded" for real patches too.

Every synthetic patch is decoded by the fold's autoencoder, whose encoder is PattenNet's frozen
encoder, and without ``neonet synthesize --classes both`` every synthetic patch is PNI+: a classifier
trained on real + synthetic patches can learn "looks decoded → PNI+". ``ClsDataModule(roundtrip_real=True)``
replaces each real **training** patch by its round trip ``decode(mean of encode(x))`` through the fold's
autoencoder, so that every training patch, of either class, is decoded. Inner-validation and test
patches stay as they are: they are the real, undecoded patches the model meets in use (``neonet
predict-case`` and ``neonet evaluate`` feed undecoded patches), and model selection on them keeps the
checkpoint that works on those (docs/method.md, "synthetic confound").

The round trips are cached once per fold (``roundtrip/fold<k>/images/<case>.nii.gz``, with the record
``roundtrip.json`` written last: the autoencoder checkpoint and the patch manifest by SHA-256 and the
cases); a current cache is reused, a stale one rebuilt.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import AutoencoderKL

from neonet.data.nifti import save_nifti
from neonet.data.patches import PatchRecord
from neonet.gen.patch_data import load_patch
from neonet.gen.upstream import load_autoencoder, require_checkpoint
from neonet.run.provenance import FileRecord, Provenance, UnreadableRecordError, differences, read_provenance
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

#: Names of the cache record's inputs.
AUTOENCODER, PATCHES = "autoencoder checkpoint", "patch manifest"


@torch.no_grad()
def roundtrip(autoencoder: AutoencoderKL, images: np.ndarray, batch: int = 8) -> np.ndarray:
    """``decode(mu)`` of each image (N, X, Y, Z) in [0, 1], with ``mu`` the posterior mean of its encoding
    (deterministic, like an autoencoder reconstruction without sampling), clamped to [0, 1]."""
    autoencoder = autoencoder.eval()
    device = next(autoencoder.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        x = torch.as_tensor(np.asarray(images[i : i + batch]), dtype=torch.float32)[:, None].to(device)
        mu, _ = autoencoder.encode(x)
        out.append(autoencoder.decode(mu).clamp(0.0, 1.0)[:, 0].float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, *np.asarray(images).shape[1:]), np.float32)


def _record(ws: Workspace, fold: int, records: Sequence[PatchRecord]) -> Provenance:
    ckpt = require_checkpoint(ws, "autoencoder", fold)
    settings = {"fold": int(fold), "cases": sorted(r.case_id for r in records)}
    return Provenance(settings, {AUTOENCODER: FileRecord.of(ckpt), PATCHES: FileRecord.of(ws.patches_manifest)})


def roundtrip_paths(ws: Workspace, fold: int, records: Sequence[PatchRecord]) -> dict[str, Path]:
    """The cached round trip of each of ``records`` (real training patches of ``fold``), by case id;
    made (or remade, when the autoencoder, the patches or the cases changed) first.

    Raises:
        MissingUpstreamError: the fold has no autoencoder ``best.ckpt`` (names the command).
    """
    folder = ws.roundtrip_dir(fold)
    paths = {r.case_id: folder / "images" / f"{r.case_id}.nii.gz" for r in records}
    now = _record(ws, fold, records)
    path = ws.roundtrip_record(fold)
    try:
        stored = read_provenance(path, f"the round-trip cache of fold {fold}")
    except UnreadableRecordError as exc:
        log.warning("%s; rebuilding it", exc)
        stored = None
    if stored is not None and all(p.is_file() for p in paths.values()):
        found = differences(stored, now)
        if not found:
            return paths
        log.info("fold %d: rebuilding the round-trip cache %s: %s", fold, folder, "; ".join(found))
    path.unlink(missing_ok=True)  # incomplete from here until the record is written
    autoencoder = load_autoencoder(now.inputs[AUTOENCODER].path)
    for r in records:
        item = load_patch(r, with_label=False)
        save_nifti(paths[r.case_id], roundtrip(autoencoder, item["image"].numpy())[0], item["affine"])
    now.write(path)
    log.info("fold %d: %d real training patches through the autoencoder → %s", fold, len(records), folder)
    return paths
