"""Measuring a trained model: perplexity and bits per byte on held-out text."""
