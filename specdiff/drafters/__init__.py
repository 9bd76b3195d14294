"""Drafters: the ``Drafter`` protocol and its kinds."""

from specdiff.drafters.autoregressive import AutoregressiveDrafter
from specdiff.drafter import Accepted, Draft, Drafter
from specdiff.drafters.conditioned.drafter import ConditionedDrafter
from specdiff.drafters.standalone.drafter import DiffusionDrafter

__all__ = ["Accepted", "AutoregressiveDrafter", "ConditionedDrafter", "DiffusionDrafter", "Draft", "Drafter"]
