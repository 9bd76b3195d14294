"""Drafters: the ``Drafter`` protocol and its kinds."""

from specdiff.drafters.autoregressive import AutoregressiveDrafter
from specdiff.drafters.base import Draft, Drafter
from specdiff.drafters.diffusion import DiffusionDrafter

__all__ = ["AutoregressiveDrafter", "DiffusionDrafter", "Draft", "Drafter"]
