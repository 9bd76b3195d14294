"""One verified tree from several draft sources: context lookup, a suffix index over earlier
outputs and a datastore, and a model drafter, sized each step by a cost model."""
