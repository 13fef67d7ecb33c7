"""The argv handling of `lmforge`: command groups, help, and every mistake answered with one
`lmforge: error:` line and exit code 1 (a bug alone keeps its traceback); dashes for underscores,
bare boolean flags, repeated list options, several positional words, YAML recipes with dotted
overrides. Most tests run small command functions defined here in place of the real table."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from lmforge import cli
from lmforge.errors import LmforgeError, ReportedByRankZero, RunStopped

CALLS: list[dict] = []


@dataclass
class Knobs:
    steps: int = 3
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False


def fit(*, data: Path, out: Path, max_new_tokens: int = 4, json: bool = False, input: list[str] | None = None,
        knobs: Knobs = Knobs()) -> None:
    """Fit a model to data. A second sentence that the summary leaves out.

    Example:
        lmforge fit --data d/ --out runs/x

    Args:
        data: where the data is.
    """
    CALLS.append(dict(data=data, out=out, max_new_tokens=max_new_tokens, json=json, input=input, knobs=knobs))


def index(inputs: list[str] | str, *, out: str = "index") -> None:
    """Index files."""
    CALLS.append(dict(inputs=inputs, out=out))


def fail(*, cause: str = "user", out: str | None = None) -> None:
    """Fail in one of several ways."""
    if cause == "user":
        raise LmforgeError("data/x.txt, line 3: field 'text' is missing; add it")
    if cause == "missing-file":
        open("/nonexistent-directory/file", "w")
    if cause == "wrapped":  # as torch.save reports a failed write
        try:
            raise OSError(errno.EACCES, "Permission denied", "/read-only/model.pt")
        except OSError as error:
            raise RuntimeError("saving failed") from error
    if cause == "disk-full":
        raise RuntimeError("I/O error: No space left on device (os error 28)")
    if cause == "interrupt":
        raise KeyboardInterrupt
    if cause == "stopped":  # SIGTERM: a checkpoint was saved
        raise RunStopped(signal.SIGTERM)
    if cause == "other-rank":
        raise ReportedByRankZero("the data directory is damaged")
    raise ValueError("a bug in lmforge")


@pytest.fixture
def commands(monkeypatch):
    """`lmforge fit`, `lmforge group index`, `lmforge group fail`: this module's functions."""
    monkeypatch.setattr(cli, "COMMANDS", {"fit": f"{__name__}:fit",
                                          "group": {"index": f"{__name__}:index", "fail": f"{__name__}:fail"}})
    monkeypatch.setitem(cli.GROUP_HELP, "group", "Commands in a group.")
    CALLS.clear()
    return CALLS


def _error(capsys) -> str:
    """stderr, which must be exactly one `lmforge: error:` line."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lmforge: error: "), err
    return err.removeprefix("lmforge: error: ").strip()


FIT = ["fit", "--data", "d", "--out", "o"]


def test_options_reach_the_function(commands):
    assert cli.run(FIT + ["--max_new_tokens", "7", "--knobs.steps", "9", "--knobs.precision", "bf16"]) == 0
    assert commands == [dict(data=Path("d"), out=Path("o"), max_new_tokens=7, json=False, input=None,
                             knobs=Knobs(steps=9, precision="bf16"))]


def test_dashes_bare_flags_and_repeated_lists(commands):
    assert cli.run(FIT + ["--max-new-tokens", "5", "--json", "--input", "a", "--input=b", "--knobs.compile"]) == 0
    assert commands[-1]["max_new_tokens"] == 5 and commands[-1]["input"] == ["a", "b"]
    assert commands[-1]["json"] is True and commands[-1]["knobs"].compile is True
    assert cli.run(FIT + ["--json", "false", "--knobs.compile", "no"]) == 0  # a following bool word is its value
    assert commands[-1]["json"] is False and commands[-1]["knobs"].compile is False
    assert cli.run(FIT + ["--input", "[x, y]"]) == 0  # a JSON list as one value
    assert commands[-1]["input"] == ["x", "y"]


def test_several_positional_words_fill_a_list_parameter(commands):
    assert cli.run(["group", "index", "a.txt", "--out", "idx", "b.txt", "c.txt"]) == 0
    assert cli.run(["group", "index", "one.txt"]) == 0
    assert commands == [dict(inputs=["a.txt", "b.txt", "c.txt"], out="idx"), dict(inputs="one.txt", out="index")]


def test_yaml_recipe_then_dotted_override(commands, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data: d\nout: o\nknobs:\n  steps: 5\n  precision: bf16\n")
    assert cli.run(["fit", "--config", str(recipe), "--knobs.steps", "6"]) == 0
    assert commands[-1]["knobs"] == Knobs(steps=6, precision="bf16") and commands[-1]["data"] == Path("d")


@pytest.mark.parametrize("argv, message", [
    ([], "lmforge needs a command: fit, group"),
    (["fitt"], "unknown command 'fitt' for lmforge; did you mean 'fit'? (choose from fit, group)"),
    (["group"], "lmforge group needs a command: index, fail"),
    (["group", "indx"], "unknown command 'indx' for lmforge group; did you mean 'index'?"),
    (["fit", "--data", "d"], "lmforge fit needs --out (`lmforge fit --help` lists the options)"),
    (["group", "index"], "lmforge group index needs INPUTS"),
    (FIT + ["--max-new-tokns", "3"], "unknown option --max-new-tokns; did you mean --max-new-tokens?"),
    (FIT + ["--knobs.steps", "many"], "--knobs.steps expects an integer, got 'many'"),
    (FIT + ["--knobs.precision", "fp8"], "--knobs.precision expects one of fp32, bf16, got 'fp8'"),
    (FIT + ["stray"], "unexpected argument 'stray'"),
])
def test_mistakes_are_one_line_and_exit_1(commands, capsys, argv, message):
    assert cli.run(argv) == 1
    assert message in _error(capsys)
    assert commands == []  # nothing ran


@pytest.mark.parametrize("cause, message", [
    ("user", "data/x.txt, line 3: field 'text' is missing; add it"),
    ("missing-file", "/nonexistent-directory/file: No such file or directory"),
    ("wrapped", "/read-only/model.pt: Permission denied"),
    ("disk-full", f"writing out/: {os.strerror(28)}"),
])
def test_errors_from_the_command_are_one_line(commands, capsys, cause, message):
    assert cli.run(["group", "fail", "--cause", cause, "--out", "out/"]) == 1
    assert _error(capsys) == message


def test_a_bug_keeps_its_traceback(commands):
    with pytest.raises(ValueError, match="a bug in lmforge"):
        cli.main(["group", "fail", "--cause", "bug"])


def test_interrupt_exits_130_quietly(commands, capsys):
    assert cli.run(["group", "fail", "--cause", "interrupt"]) == 130
    assert capsys.readouterr().err == "lmforge: interrupted\n"


def test_a_stopped_run_exits_as_the_signal_would(commands, capsys):
    assert cli.run(["group", "fail", "--cause", "stopped"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == ""


def test_ranks_other_than_zero_exit_1_without_repeating_the_error(commands, capsys):
    assert cli.run(["group", "fail", "--cause", "other-rank"]) == 1
    assert capsys.readouterr().err == ""


def test_command_help_shows_summary_options_and_example(commands, capsys):
    assert cli.run(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Fit a model to data." in out and "--knobs.steps" in out and "--max_new_tokens" in out
    assert "example:\n    lmforge fit --data d/ --out runs/x" in out and "where the data is" not in out.split("options")[0]
    assert commands == []
    assert cli.run(["--help"]) == 0
    top = capsys.readouterr().out
    assert "Fit a model to data" in top and "A second sentence" not in top and "Commands in a group." in top


def test_every_real_command_is_listed_and_loads(capsys):
    """The real table: every target imports and its signature builds a parser (`--help` builds
    them all and exits 0)."""
    assert cli.run(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)
    assert cli.run(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS["convert"])


def _lmforge(*argv: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge", *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, **options)


def test_entry_point_answers_a_bad_option_in_one_line(tmp_path):
    done = _lmforge("bm25", "search", str(tmp_path), "--query", "x", "--k", "ten")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr == "lmforge: error: --k expects an integer, got 'ten'\n"


def test_light_commands_start_without_torch():
    """Only the command being run is imported: `bm25` and `tokenizer` need no torch."""
    code = ("import sys; from lmforge.cli import run; "
            "codes = [run(['bm25', 'search', '--help']), run(['tokenizer', 'encode', '--help'])]; "
            "print(codes, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[0, 0] False", done.stderr


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`lmforge ... | head`: the reader goes away; exit 0, and no BrokenPipeError on stderr."""
    (tmp_path / "spam_command.py").write_text(
        "def spam() -> None:\n    '''Print many lines.'''\n    for n in range(10**6):\n        print(n)\n")
    code = ("from lmforge import cli; cli.COMMANDS = {'spam': 'spam_command:spam'}; cli.main(['spam'])")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert process.stdout.readline() == "0\n"
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 0 and stderr == ""
