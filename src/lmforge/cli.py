"""The `lmforge` command line, generated from the typed command functions by jsonargparse.

Each command is a plain Python function in `lmforge.commands`; its signature is the CLI (and the
YAML recipe schema: `--config recipe.yaml`, dotted overrides such as `--train.lr 3e-4`). Only the
command being run is imported, so light commands (`bm25`, `tokenizer`) start without torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import inspect
import json
import os
import re
import sys
import typing
from collections.abc import Callable

from lmforge.errors import LmforgeError, ReportedByRankZero, RunStopped

# Command path -> "module:function". Nested dicts are command groups (`lmforge model info`).
COMMANDS: dict = {
    "quickstart": "lmforge.commands.quickstart:quickstart",
    "prepare": "lmforge.commands.prepare:prepare",
    "quality": {"train": "lmforge.commands.quality:train"},
    "tokenizer": {
        "train": "lmforge.commands.tokenizer:train",
        "encode": "lmforge.commands.tokenizer:encode",
        "decode": "lmforge.commands.tokenizer:decode",
    },
    "model": {"info": "lmforge.commands.model_info:info"},
    "pretrain": "lmforge.commands.pretrain:pretrain",
    "finetune": "lmforge.commands.finetune:finetune",
    "eval": {"ppl": "lmforge.commands.eval:ppl", "tasks": "lmforge.commands.eval:tasks", "rag": "lmforge.commands.eval_rag:rag"},
    "plot": "lmforge.commands.plot:plot",
    "generate": "lmforge.commands.generate:generate",
    "chat": "lmforge.commands.chat:chat",
    "serve": "lmforge.commands.serve:serve",
    "quantize": "lmforge.commands.quantize:quantize",
    "classify": "lmforge.commands.classify:classify",
    "convert": {
        "from-hf": "lmforge.commands.convert:from_hf",
        "to-hf": "lmforge.commands.convert:to_hf",
        "from-gguf": "lmforge.commands.convert:from_gguf",
        "to-gguf": "lmforge.commands.convert:to_gguf",
        "to-peft": "lmforge.commands.convert:to_peft",
        "from-peft": "lmforge.commands.convert:from_peft",
    },
    "bm25": {"index": "lmforge.commands.bm25:index", "search": "lmforge.commands.bm25:search"},
    "align": {
        "reward": "lmforge.commands.align:reward",
        "reward-score": "lmforge.commands.align:reward_score",
        "dpo": "lmforge.commands.align:dpo",
        "ppo": "lmforge.commands.align:ppo",
    },
}

GROUP_HELP = {
    "model": "Inspect model configurations and presets.",
    "tokenizer": "Train a byte-level BPE tokenizer; encode and decode text with any tokenizer file.",
    "convert": "Convert checkpoints to and from Hugging Face directories, GGUF files and PEFT adapters.",
    "eval": "Evaluate a checkpoint: perplexity on held-out text, zero- and few-shot tasks, retrieval-augmented answers.",
    "bm25": "Index your documents and rank passages for a query with BM25 (no model needed).",
    "align": "Preference training: reward models and their scores, DPO, and PPO against a reward model.",
    "quality": "Train the learned quality classifier that `prepare --quality-model` filters with.",
}


def _load(target: str) -> Callable:
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def _variadic_positional(function: Callable) -> bool:
    """True when the command's only positional parameter is a list (`lmforge bm25 index A B C`)."""
    positional = [p for p in inspect.signature(function).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 1:
        return False
    hint = typing.get_type_hints(function)[positional[0].name]
    return typing.get_origin(hint) is list or any(typing.get_origin(arg) is list for arg in typing.get_args(hint))


def _gather_positionals(argv: list[str]) -> list[str]:
    """Several positional words become one JSON list, which jsonargparse parses into the list
    parameter. Run after `_normalise_argv`, where every option without `=` takes the next word."""
    words, rest, index = [], [], 0
    while index < len(argv):
        token = argv[index]
        if token.startswith("--"):
            rest.append(token)
            if "=" not in token and index + 1 < len(argv):
                rest.append(argv[index + 1])
                index += 1
        else:
            words.append(token)
        index += 1
    if len(words) < 2:
        return argv
    return [json.dumps(words), *rest]


def _split_docstring(function: Callable) -> tuple[str, str]:
    """(description, example) from a command's docstring: the text before `Args:`; lines after
    `Example:` become the help epilog."""
    doc = inspect.getdoc(function) or ""
    doc = doc.split("\nArgs:")[0].rstrip()
    description, _, example = doc.partition("Example:")
    return description.strip(), example.strip("\n")


def _options(function: Callable) -> dict[str, object]:
    """Every `--option` of the command with its type, dataclass fields included (`--train.compile`)."""
    options: dict[str, object] = {}

    def visit(hints: dict, prefix: str) -> None:
        for name, hint in hints.items():
            if dataclasses.is_dataclass(hint):
                visit(typing.get_type_hints(hint), f"{prefix}{name}.")
            else:
                options[f"--{prefix}{name}"] = hint

    hints = typing.get_type_hints(function)
    hints.pop("return", None)
    visit(hints, "")
    return options


def _bool_options(function: Callable) -> set[str]:
    """Every `--option` of the command whose type is bool (or bool | None)."""
    def is_bool(hint: object) -> bool:
        args = typing.get_args(hint)
        return hint is bool or (bool in args and len(args) == 2 and type(None) in args)

    return {name for name, hint in _options(function).items() if is_bool(hint)}


def _list_options(function: Callable) -> set[str]:
    """Every top-level `--option` of the command whose type is a list (`--input`)."""
    hints = typing.get_type_hints(function)
    return {
        f"--{name}"
        for name, hint in hints.items()
        if typing.get_origin(hint) is list or any(typing.get_origin(arg) is list for arg in typing.get_args(hint))
    }


BOOL_WORDS = ("true", "false", "yes", "no")


def _normalise_argv(argv: list[str], bool_options: set[str], list_options: set[str] = frozenset()) -> list[str]:
    """Accept `--max-new-tokens` for `--max_new_tokens`, a bare `--json` for `--json true`, and a
    repeated list option (`--input a --input b`) as jsonargparse's append (`--input+ a --input+ b`)."""
    result: list[str] = []
    for index, token in enumerate(argv):
        if token.startswith("--") and len(token) > 2:
            name, equals, value = token.partition("=")
            name = "--" + name[2:].replace("-", "_")
            token = name + equals + value
            following = argv[index + 1] if index + 1 < len(argv) else None
            if not equals and name in bool_options and (following or "").lower() not in BOOL_WORDS:
                token = name + "=true"
            elif name in list_options and not (value if equals else following or "").lstrip().startswith("["):
                result.append(name + "+")
                token = value if equals else None
        if token is not None:
            result.append(token)
    return result


def _make_parser(description: str, epilog: str = "", prog: str | None = None):
    from jsonargparse import ArgumentParser, DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter):
        def _fill_text(self, text, width, indent):  # keep examples' line breaks
            return "".join(indent + line for line in text.splitlines(keepends=True))

    return ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"example:\n{epilog}" if epilog else None,
        formatter_class=Formatter,
        exit_on_error=False,
    )


def _add_tree(parser, tree: dict, path: list[str], wanted: list[str] | None) -> None:
    """Attach subcommands for `tree`; when `wanted` names a path, only that branch is built."""
    subcommands = parser.add_subcommands(required=True, dest="command")
    for name, node in tree.items():
        if wanted is not None and wanted[:1] != [name]:
            continue
        if isinstance(node, dict):
            child = _make_parser(GROUP_HELP.get(name, ""))
            subcommands.add_subcommand(name, child, help=GROUP_HELP.get(name, ""))  # parents first
            _add_tree(child, node, path + [name], wanted[1:] if wanted else None)
        else:
            function = _load(node)
            description, example = _split_docstring(function)
            child = _make_parser(description, example)
            if "config" not in inspect.signature(function).parameters:  # `model info --config` names a model file
                child.add_argument("--config", action="config", help="a YAML recipe: its keys are this command's options")
            child.add_function_arguments(function, as_group=False, as_positional=True)
            summary = " ".join(description.split("\n\n")[0].split()).split(". ")[0].rstrip(".")
            subcommands.add_subcommand(name, child, help=summary)


def _resolve(argv: list[str]) -> tuple[list[str], str | None]:
    """The command path named by the leading words of argv, and its target if it is a leaf."""
    node: str | dict = COMMANDS
    path: list[str] = []
    for token in argv:
        if not isinstance(node, dict) or token not in node:
            break
        path.append(token)
        node = node[token]
    return path, node if isinstance(node, str) else None


def _describe(hint: object) -> str:
    """What an option's type admits, in words: `an integer`, `one of fp32, bf16`."""
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(str(argument) for argument in typing.get_args(hint))
    if len(arguments) < len(typing.get_args(hint)):  # X | None
        return _describe(arguments[0] if len(arguments) == 1 else typing.Union[tuple(arguments)]) + " or null"
    origin = typing.get_origin(hint) or hint
    words = {int: "an integer", float: "a number", bool: "true or false", str: "text", list: "a list such as '[a, b]'",
             tuple: "a list such as '[a, b]'", dict: "a mapping such as '{a: 1}'"}
    return words.get(origin, getattr(hint, "__name__", str(hint)))


def _display(option: str) -> str:
    """An option as the README writes it: `--max-new-tokens`, `--train.micro_batch_size`."""
    return option if "." in option else option.replace("_", "-")


def _argument_error(message: str, path: list[str], function: Callable | None) -> str:
    """jsonargparse's (often multi-line) parse error as one line that names the option and the fix."""
    command = " ".join(["lmforge", *path])
    help_hint = f"`{command} --help` lists the options"
    options = _options(function) if function else {}
    if match := re.match(r"unrecognized arguments: (.*)", message, re.S):
        words = match.group(1).split()
        unknown = next((word for word in words if word.startswith("--")), None)
        if unknown is None:
            return f"unexpected argument {' '.join(words)!r} ({help_hint})"
        name = "--" + unknown.split("=")[0][2:].replace("-", "_")
        close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
        suggestion = f"; did you mean {_display(close[0])}?" if close else ""
        return f"unknown option {_display(name)}{suggestion} ({help_hint})"
    if match := re.match(r'Parser key "([^"]+)":\s*(.*)', message, re.S):
        option, detail = "--" + match.group(1), match.group(2)
        got = re.findall(r"(?:Got|Given) value: (.*)", detail)
        if option in options and got:
            return f"{_display(option)} expects {_describe(options[option])}, got {got[-1].strip()!r}"
        return f"{_display(option)}: {' '.join(detail.split())}"
    if match := re.match(r"the following arguments are required: (.*)", message):
        positional = {name for name, parameter in inspect.signature(function).parameters.items()
                      if parameter.kind is parameter.POSITIONAL_OR_KEYWORD} if function else set()
        names = [name.split(".")[-1] for name in match.group(1).split(", ")]
        missing = [name.upper() if name in positional else _display("--" + name) for name in names]
        return f"{command} needs {' and '.join(missing)} ({help_hint})"
    if match := re.match(r'expected "(?:[\w.]+\.)?command" to be one of \{(.*)\}', message):
        return f"{command} needs a command: {match.group(1).replace(',', ', ')}"
    if match := re.match(r"argument command: invalid choice: '(.*)' \(choose from (.*)\)", message):
        choices = [choice.strip(" '") for choice in match.group(2).split(",")]
        close = difflib.get_close_matches(match.group(1), choices, n=1)
        suggestion = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown command '{match.group(1)}' for {command}{suggestion} (choose from {', '.join(choices)})"
    return " ".join(message.split())


def _os_error(error: BaseException) -> OSError | None:
    """The operating-system error behind `error`, if any: itself, one in its chain (torch.save
    wraps a failed write in a RuntimeError), or the `os error N` a safetensors write reports."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    if match := re.search(r"os error (\d+)", str(error)):
        return OSError(int(match.group(1)), os.strerror(int(match.group(1))))
    return None


def _os_error_message(error: OSError, output: object) -> str:
    """One line naming the path and the cause; a write that did not say which file it was (a full
    disk, mid-file) is named by the command's output."""
    paths = [str(name) for name in (error.filename, error.filename2) if name]
    if not paths and output is not None:
        paths = [f"writing {output}"]
    cause = error.strerror or f"write failed ({error}); is the disk full?"  # numpy's short writes carry no errno
    return f"{' -> '.join(paths)}: {cause}" if paths else cause


def _print_error(message: str) -> None:
    """`lmforge: error: MESSAGE` on a line of its own, after closing any progress bar still drawn
    (a bar ends in a carriage return, not a newline)."""
    if "tqdm" in sys.modules:
        for bar in list(getattr(sys.modules["tqdm"].tqdm, "_instances", ())):
            bar.close()
    print(f"lmforge: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    path, target = _resolve(argv)
    function = _load(target) if target is not None else None
    values: dict = {}
    try:
        if function is not None:
            arguments = _normalise_argv(argv[len(path):], _bool_options(function), _list_options(function))
            argv = argv[: len(path)] + (_gather_positionals(arguments) if _variadic_positional(function) else arguments)
        parser = _make_parser(
            "lmforge turns raw text into a working language model: prepare a corpus, train a "
            "tokenizer,\npretrain, evaluate, fine-tune, generate, and retrieve.\n"
            "Run `lmforge COMMAND --help` for a command's options and an example.",
            prog="lmforge",
        )
        _add_tree(parser, COMMANDS, [], path if target is not None else None)
        try:
            namespace = parser.parse_args(argv)
        except argparse.ArgumentError as error:
            raise LmforgeError(_argument_error(str(error), path, function)) from None
        if function is None:
            parser.print_help()
            raise SystemExit(2)
        arguments = parser.instantiate(namespace)
        for name in path:
            arguments = arguments[name]
        values = {key: value for key, value in vars(arguments).items() if key in inspect.signature(function).parameters}
        function(**values)
    except ReportedByRankZero:
        raise SystemExit(1) from None
    except RunStopped as stop:
        raise SystemExit(128 + stop.signum) from None
    except LmforgeError as error:
        _print_error(str(error))
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        # `lmforge ... | head`: the reader went away; exit quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except Exception as error:  # an existing file where a directory goes, a read-only or full disk, ...
        os_error = _os_error(error)
        if os_error is None:
            raise  # a bug: keep its traceback
        output = values.get("out", values.get("dst"))
        _print_error(_os_error_message(os_error, output))
        raise SystemExit(1) from None


def run(argv: list[str]) -> int:
    """Run `lmforge ARGV...` in this process and return its exit code instead of exiting."""
    try:
        main(argv)
    except SystemExit as exit_request:
        return exit_request.code if isinstance(exit_request.code, int) else 1
    return 0


if __name__ == "__main__":
    main()
