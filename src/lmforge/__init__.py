"""lmforge: raw text to a working language model, end to end."""

__version__ = "0.1.0"
