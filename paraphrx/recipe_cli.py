"""Command line → dataclasses, with one-line errors: the one argument parser of every entry point (training,
evaluation, prep and the small tools), TRL's `TrlParser`.

Accepts the three launch forms docs/training.md shows, each with `--any_key value` overrides on top:

    accelerate launch train_sft.py recipes/bucket1-4.yaml --learning_rate 1e-4
    python train_sft.py recipes/bucket1-4.yaml
    python train_sft.py --config recipes/bucket1-4.yaml

`TrlParser` only reads YAML from `--config`, so a leading positional `.yaml` is rewritten into that form. A bad
recipe or flag (missing file, broken YAML, unknown key, a value of the wrong type, a check of the dataclasses' own)
becomes one line naming the key and where it came from (`recipes/x.yaml: lora_r: expected an integer, got 16.5`,
`command line: --max_steps: invalid int value: 'abc'`), exit code 2. Importing this module is cheap (no torch):
`python -m prep` starts quickly.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path

import yaml
from trl import TrlParser

from paraphrx.errors import EXIT_BAD_INPUT, UserError
from paraphrx.limits import MAX_RECIPE_BYTES, MAX_YAML_DEPTH


class RecipeError(UserError):
    """A recipe or command line that cannot be parsed; the message is one line meant for the user."""


_LONE_PERCENT = re.compile(r"(?<!%)%(?![%(])")  # a `%` that is not argparse's `%%` or `%(default)s`
_ARGUMENT = re.compile(r"^argument (--[\w]+)(?:/--[\w-]+)?: ")  # argparse's "argument --max_steps/--max-steps: "


class _RecipeParser(TrlParser):
    """TrlParser whose argparse errors raise instead of printing usage and exiting, whose `--no_<flag>` switches say
    what they do (HfArgumentParser gives them the help text of `--<flag>`: "--no_include_base  Also evaluate the base
    model"), and whose help texts may hold a plain `%` ("95% intervals"; argparse would fail formatting --help)."""

    def __init__(self, dataclass_types, **kwargs):
        super().__init__(dataclass_types, **kwargs)
        for action in self._actions:
            if action.option_strings and action.option_strings[0] == f"--no_{action.dest}":
                action.help = f"Turn --{action.dest} off."
            elif isinstance(action.help, str):
                action.help = _LONE_PERCENT.sub("%%", action.help)

    def error(self, message: str):  # argparse calls this for bad values and missing arguments
        raise RecipeError(message)


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """`recipes/x.yaml --k v` → `--config recipes/x.yaml --k v` (TrlParser only knows `--config`)."""
    argv = list(argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        if "--config" in argv:
            raise RecipeError(f"give the recipe once: positional {argv[0]!r} and --config both set")
        argv = ["--config", argv[0], *argv[1:]]
    return argv


def recipe_path(argv: Sequence[str]) -> Path | None:
    """The recipe file named by `--config` in a normalized argv, if any."""
    argv = list(argv)
    if "--config" not in argv:
        return None
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise RecipeError("--config needs a recipe file")
    return Path(argv[i + 1])


class _FlatYamlLoader(yaml.SafeLoader):
    """`yaml.safe_load` without aliases and with bounded nesting. A recipe is flat; an alias (`*name`) is how a 2 KB
    file expands to gigabytes (the "billion laughs"), and deep nesting would exhaust the composer's recursion."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed here", self.peek_event().start_mark
            )
        if self.depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load_yaml_file(path: Path):
    """A recipe-like YAML file (a recipe, an evaluation config, an adapter's recipe.yaml), bounded in size, nesting
    and expansion; anything else is a one-line RecipeError naming the file (and line)."""
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {size:,} bytes, more than a recipe's limit of {MAX_RECIPE_BYTES:,}")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_FlatYamlLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 (invalid byte at position {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{path}{where}: invalid YAML: {problem}") from None


def read_recipe(path: Path, known_keys: set[str]) -> dict:
    """Load a flat recipe YAML and reject what TrlParser would reject with a long message or a traceback."""
    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of key: value, got {type(data).__name__}")
    unknown = [key for key in data if key != "env" and key not in known_keys]
    if unknown:
        raise RecipeError(f"{path}: unknown key {unknown[0]!r}" + (f" (and {unknown[1:]})" if unknown[1:] else ""))
    return data


# --- value types: TrlParser hands a recipe's values to the dataclasses unconverted (argparse converts only strings),
# so `lora_r: 16.5` or `max_steps: 2.5` would reach peft or the Trainer and fail there, deep in a traceback.
_BOOL_WORDS = (
    "yes",
    "no",
    "true",
    "false",
    "t",
    "f",
    "y",
    "n",
    "1",
    "0",
)  # what HfArgumentParser's string_to_bool takes


def _parses(kind, text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def value_fits(value, hint) -> bool:
    """Whether a YAML value is one the field annotated `hint` accepts, after the conversion argparse applies to a string
    (`learning_rate: 1e-4` is a string to YAML). A type this check does not know is left to the dataclass."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin is typing.Union or origin is types.UnionType:
        return any(value_fits(value, arg) for arg in _enum_over_str(args))
    if hint is type(None):
        return value is None
    if origin is typing.Literal:  # YAML 1.1 reads a bare on/off as a boolean; `fast_path` takes it so
        return value in args or (isinstance(value, bool) and {"on", "off"} <= set(args))
    if origin in (list, tuple) or hint in (list, tuple):  # one value for a list field is taken as is (`all-linear`)
        return (
            all(value_fits(item, args[0]) for item in (value if isinstance(value, list) else [value])) if args else True
        )
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool) or (isinstance(value, str) and value.lower() in _BOOL_WORDS)
    if hint is int:
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and _parses(int, value)
        )
    if hint is float:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        return numeric or (isinstance(value, str) and _parses(float, value))
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return isinstance(value, hint) or value in {member.value for member in hint}
    return True


def _enum_over_str(args: tuple) -> tuple:
    """`SchedulerType | str`: transformers turns the string into the enum, so only its values are accepted."""
    if str in args and any(isinstance(arg, type) and issubclass(arg, Enum) for arg in args):
        return tuple(arg for arg in args if arg is not str)
    return args


def describe_type(hint) -> str:
    """`int | None` -> "an integer or null", for the error line."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(dict.fromkeys(describe_type(arg) for arg in _enum_over_str(args)))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if isinstance(hint, type) and issubclass(hint, Enum):
        return "one of " + ", ".join(repr(member.value) for member in hint)
    if origin in (list, tuple) or hint in (list, tuple):
        return f"a list of {describe_type(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    names = {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        type(None): "null",
        dict: "a mapping",
    }
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def field_types(dataclass_types) -> dict[str, list]:
    """Each recipe key's annotations (a key shared by two dataclasses, e.g. trust_remote_code, has two), and the
    `choices` a field's metadata lists. The classes' own annotations: HfArgumentParser rewrites `field.type`."""
    hints: dict[str, list] = {}
    for cls in dataclass_types:
        resolved = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                hint, choices = resolved[f.name], f.metadata.get("choices")
                if choices:  # argparse checks these only on the command line
                    literal = typing.Literal[tuple(choices)]
                    hint = literal | None if value_fits(None, hint) else literal
                hints.setdefault(f.name, []).append(hint)
    return hints


def check_recipe_values(path: Path, data: dict, dataclass_types) -> None:
    """Every value of a recipe file against its field's type: one line naming the file and the key."""
    hints = field_types(dataclass_types)
    for key, value in data.items():
        for hint in hints.get(key, []):
            if not value_fits(value, hint):
                shown = repr(value) if len(repr(value)) <= 60 else f"a {type(value).__name__}"
                raise RecipeError(f"{path}: {key}: expected {describe_type(hint)}, got {shown}")


def command_line_keys(argv: Sequence[str]) -> set[str]:
    """The keys an argv sets (`--max_steps 5`, `--max-steps=5`), besides --config."""
    return {arg[2:].split("=")[0].replace("-", "_") for arg in argv if arg.startswith("--")} - {"config"}


def blame(message: str, path: Path | None, file_keys: set[str], argv: Sequence[str]) -> str:
    """Where a check of the parsed values failed, from the keys its message names: the command line for a key set
    there (it overrides the file), the recipe file for one only the file sets, both when it names both."""
    named = set(re.findall(r"[a-z][a-z0-9_]+", message))
    from_cli = named & command_line_keys(argv)
    from_file = (named & file_keys) - from_cli
    if path is None or (from_cli and not from_file):
        return "command line"
    return f"{path} and the command line" if from_cli else str(path)


def parse_recipe(
    argv: Sequence[str] | None = None, dataclass_types=None, check: Callable[..., None] | None = None, **parser_kwargs
) -> tuple:
    """Parse argv (default sys.argv[1:]) into `dataclass_types` instances (default: the training recipe's); raises
    RecipeError on bad input, naming the key and where it came from (the recipe file or the command line).
    `check(*parsed)` may refuse a combination by raising ValueError; `parser_kwargs` go to argparse (`prog`,
    `description` for --help)."""
    if dataclass_types is None:
        from paraphrx.config import RECIPE_DATACLASSES as dataclass_types
    argv = normalize_argv(sys.argv[1:] if argv is None else argv)
    parser = _RecipeParser(dataclass_types, **parser_kwargs)
    known = {action.dest for action in parser._actions}
    path = recipe_path(argv)
    data = read_recipe(path, known) if path is not None else {}
    check_recipe_values(path, data, dataclass_types)
    try:
        *parsed, remaining = parser.parse_args_and_config(argv, return_remaining_strings=True)
        if remaining:
            raise RecipeError(f"unknown option {remaining[0]!r}")
        if check is not None:
            check(*parsed)
    except RecipeError as err:  # argparse: a recipe's values passed the check above, so this is the command line
        raise RecipeError("command line: " + _ARGUMENT.sub(r"\1: ", str(err))) from None
    except ValueError as err:  # the dataclasses' own __post_init__ checks (e.g. eval/save step mismatch), `check`
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise RecipeError(f"{blame(message, path, set(data), argv)}: {message}") from None
    return tuple(parsed)


def parse_recipe_or_exit(
    argv: Sequence[str] | None = None, dataclass_types=None, check: Callable[..., None] | None = None, **parser_kwargs
) -> tuple:
    """`parse_recipe` for entry points: a bad recipe prints one line to stderr and exits with code 2."""
    try:
        return parse_recipe(argv, dataclass_types, check, **parser_kwargs)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
