"""Quantization: int8 / int4 weight-only schemes, their layers and kernels, and quantizing a model from outside."""
