"""The exceptions library code raises for the CLI to turn into exit codes: `LmforgeError` means
"the user gave us something wrong" (printed on one line, exit 1); `RunStopped` means a run stopped
when asked to. Anything else is a bug and keeps its traceback.
"""


class LmforgeError(Exception):
    """A mistake in the user's input (a file, a field, an option), with a message that says the fix."""


class ReportedByRankZero(LmforgeError):
    """The error every process of a distributed run met, on a process other than rank 0: rank 0
    alone prints it, so the others exit 1 without a word instead of repeating it."""


class RunStopped(Exception):
    """A run stopped on SIGINT or SIGTERM after saving a checkpoint (nothing is wrong): the CLI
    exits with 128 + the signal's number, as a shell reports a process the signal ended."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def warn(message: str) -> None:
    """A one-line warning for the person running the command: something was recovered or skipped."""
    import sys

    print(f"lmforge: warning: {message}", file=sys.stderr, flush=True)
