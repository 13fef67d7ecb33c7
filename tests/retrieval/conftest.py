"""A small real English corpus for the BM25 tests: docstring lines of the standard library."""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import itertools
import json
import logging
import pathlib
import re
import string
import textwrap

import pytest

MODULES = (argparse, collections, functools, itertools, json, logging, pathlib, re, string, textwrap)


@pytest.fixture(scope="session")
def english_lines() -> list[str]:
    """About 400 distinct lines of real prose, with the skewed word frequencies of real text."""
    lines: list[str] = []
    for module in MODULES:
        for name in sorted(dir(module)):
            doc = inspect.getdoc(getattr(module, name)) if not name.startswith("_") else None
            lines.extend(line.strip() for line in (doc or "").splitlines() if len(line.split()) >= 3)
    unique = list(dict.fromkeys(lines))
    assert len(unique) >= 300, "the standard library's docstrings should give a few hundred lines"
    return unique[:400]
