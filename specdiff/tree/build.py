"""Assemble a ``TreeDrafter`` from a ``TreeConfig``: the sources it names, the datastore, and
the verify-cost table measured on this machine."""

from __future__ import annotations

from specdiff.tree.config import TreeConfig
from specdiff.tree.cost_cache import cached_verify_costs
from specdiff.tree.costs import VerifyCosts
from specdiff.tree.datastore import datastore_files, index_datastore
from specdiff.tree.drafter import TreeDrafter
from specdiff.tree.sources import LookupSource, ModelSource
from specdiff.tree.suffix_index import SuffixIndex


def check_tree_config(config: TreeConfig) -> None:
    """What can be checked before any model loads: the datastore exists and holds files."""
    if config.datastore:
        datastore_files(config.datastore)


def lookup_sources(config: TreeConfig, outputs: SuffixIndex | None) -> list[LookupSource]:
    """The lookup sources ``config`` names; the suffix source searches ``outputs``."""
    sources = []
    if "lookup" in config.source_names:
        sources.append(LookupSource("lookup", config.min_ngram, config.max_ngram, config.max_branches))
    if "suffix" in config.source_names:
        sources.append(LookupSource("suffix", config.min_ngram, config.max_ngram, config.max_branches, index=outputs))
    return sources


def build_tree_drafter(config: TreeConfig, verifier, drafter, tokenizer=None,
                       costs: VerifyCosts | None = None) -> TreeDrafter:
    """``drafter`` (or None) becomes the model source when ``config`` names 'diffusion';
    ``costs`` None: this machine's table for ``verifier`` (see ``cost_cache``)."""
    names = config.source_names
    if "diffusion" in names and drafter is None:
        raise ValueError("--sources names 'diffusion' but no drafter was given (--drafter)")
    outputs = SuffixIndex(config.max_ngram) if "suffix" in names else None
    if outputs is not None and config.datastore:
        if tokenizer is None:
            raise ValueError("indexing --datastore needs the verifier's tokenizer")
        index_datastore(config.datastore, tokenizer, outputs)
    lookups = lookup_sources(config, outputs)
    if costs is None:
        costs = cached_verify_costs(verifier)
    model = ModelSource(drafter, config.max_depth + 1) if "diffusion" in names else None
    return TreeDrafter(verifier.vocab_size, lookups, model, costs, config, outputs)
