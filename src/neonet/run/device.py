"""The ``--device`` option of the inference verbs (``synthesize``, ``predict-case``, ``evaluate``)."""

from __future__ import annotations

import torch

from neonet.errors import NeonetError


def resolve_device(device: str) -> torch.device:
    """``auto`` → the first CUDA GPU if there is one, else the CPU; anything else as given to torch.

    Raises:
        NeonetError: ``device`` is not a device torch knows (e.g. ``--device gpu``).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise NeonetError(f"--device {device!r}: {exc}; use auto, cpu, cuda or cuda:N") from exc
