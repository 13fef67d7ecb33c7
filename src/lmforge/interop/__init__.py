"""Interoperability with other tools' files: Hugging Face model directories."""
