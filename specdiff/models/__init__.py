"""The diffusion drafter network, how it is built from a base model, and named models."""
