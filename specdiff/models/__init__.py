"""Named models (registry), their preparation from packaged GGUF files, loading, and the linear
kernels the verifier and drafters compute with. Drafters live in ``specdiff/drafters``."""
