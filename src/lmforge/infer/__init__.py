"""Inference: sampling with the KV cache, streaming text."""
