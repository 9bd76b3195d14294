"""Running specdiff's models and drafters inside vLLM: environment, offline engine, server."""
