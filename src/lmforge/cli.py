"""The `lmforge` command line, generated from the typed command functions by jsonargparse.

Each command is a plain Python function in `lmforge.commands`; its signature is the CLI (and the
YAML recipe schema: `--config recipe.yaml`, dotted overrides such as `--train.lr 3e-4`). Only the
command being run is imported, so light commands (`bm25`, `tokenizer`) start without torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import sys
import typing
from collections.abc import Callable

from lmforge.errors import LmforgeError

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
    "eval": {"ppl": "lmforge.commands.eval:ppl"},
    "plot": "lmforge.commands.plot:plot",
    "generate": "lmforge.commands.generate:generate",
    "convert": {
        "from-hf": "lmforge.commands.convert:from_hf",
        "to-hf": "lmforge.commands.convert:to_hf",
    },
    "bm25": {"index": "lmforge.commands.bm25:index", "search": "lmforge.commands.bm25:search"},
}

GROUP_HELP = {
    "model": "Inspect model configurations and presets.",
    "tokenizer": "Train a byte-level BPE tokenizer; encode and decode text with any tokenizer file.",
    "convert": "Convert checkpoints to and from Hugging Face directories.",
    "eval": "Evaluate a checkpoint: loss, perplexity and bits per byte on held-out text.",
    "bm25": "Index your documents and rank passages for a query with BM25 (no model needed).",
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


def _bool_options(function: Callable) -> set[str]:
    """Every `--option` of the command whose type is bool, dataclass fields included (`--train.compile`)."""
    options: set[str] = set()

    def visit(hints: dict, prefix: str) -> None:
        for name, hint in hints.items():
            args = typing.get_args(hint)
            if hint is bool or (args and bool in args and len(args) == 2 and type(None) in args):
                options.add(f"--{prefix}{name}")
            elif dataclasses.is_dataclass(hint):
                visit(typing.get_type_hints(hint), f"{prefix}{name}.")

    hints = typing.get_type_hints(function)
    hints.pop("return", None)
    visit(hints, "")
    return options


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
        exit_on_error=True,
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


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    path, target = _resolve(argv)
    try:
        if target is not None:
            function = _load(target)
            arguments = _normalise_argv(argv[len(path):], _bool_options(function), _list_options(function))
            argv = argv[: len(path)] + (_gather_positionals(arguments) if _variadic_positional(function) else arguments)
        parser = _make_parser(
            "lmforge turns raw text into a working language model: prepare a corpus, train a "
            "tokenizer,\npretrain, evaluate, fine-tune, generate, and retrieve.\n"
            "Run `lmforge COMMAND --help` for a command's options and an example.",
            prog="lmforge",
        )
        _add_tree(parser, COMMANDS, [], path if target is not None else None)
        namespace = parser.parse_args(argv)
        if target is None:
            parser.print_help()
            raise SystemExit(2)
        arguments = parser.instantiate(namespace)
        for name in path:
            arguments = arguments[name]
        function = _load(target)
        function(**{key: value for key, value in vars(arguments).items() if key in inspect.signature(function).parameters})
    except LmforgeError as error:
        print(f"lmforge: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        # `lmforge ... | head`: the reader went away; exit quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


def run(argv: list[str]) -> int:
    """Run `lmforge ARGV...` in this process and return its exit code instead of exiting."""
    try:
        main(argv)
    except SystemExit as exit_request:
        return exit_request.code if isinstance(exit_request.code, int) else 1
    return 0


if __name__ == "__main__":
    main()
