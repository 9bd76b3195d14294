"""Verifier backends beside the transformers ``Verifier`` (``specdiff/verifier.py``): each keeps a
KV cache behind prefill / score / truncate / commit, so the engine, the tree and the acceptance
rules run on any of them unchanged."""
