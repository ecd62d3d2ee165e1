"""``--device`` of the inference verbs: one resolver (``neonet.run.device``)."""

from __future__ import annotations

import pytest
import torch

from neonet.errors import NeonetError
from neonet.run.device import resolve_device


def test_auto_is_the_cpu_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_is_cuda_with_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_a_named_device_is_kept() -> None:
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_an_unknown_device_names_the_option_and_the_choices() -> None:
    with pytest.raises(NeonetError, match=r"--device 'gpu'.*auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
