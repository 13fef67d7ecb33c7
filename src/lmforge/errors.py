"""The one exception type that means "the user gave us something wrong".

The CLI prints it on one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class LmforgeError(Exception):
    """A mistake in the user's input (a file, a field, an option), with a message that says the fix."""


def warn(message: str) -> None:
    """A one-line warning for the person running the command: something was recovered or skipped."""
    import sys

    print(f"lmforge: warning: {message}", file=sys.stderr, flush=True)
