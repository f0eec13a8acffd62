"""Full precision inside bf16 autocast: rays, Gaussian decoding, rendering and metrics stay fp32."""

from __future__ import annotations

import contextlib

import torch


def no_autocast(device: torch.device | str):
    """A context that disables autocast on `device` (a no-op on devices without autocast, e.g.
    the meta device of the FLOP counters)."""
    device_type = torch.device(device).type
    if device_type in ("cpu", "cuda"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
