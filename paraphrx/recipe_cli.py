"""Command line → dataclasses, with one-line errors: the one argument parser of every entry point (training,
evaluation, prep and the small tools), TRL's `TrlParser`.

Accepts the three launch forms docs/training.md shows, each with `--any_key value` overrides on top:

    accelerate launch train_sft.py recipes/bucket1-4.yaml --learning_rate 1e-4
    python train_sft.py recipes/bucket1-4.yaml
    python train_sft.py --config recipes/bucket1-4.yaml

`TrlParser` only reads YAML from `--config`, so a leading positional `.yaml` is rewritten into that form. A bad
recipe or flag (missing file, broken YAML, unknown key, wrong type, a check of the dataclasses' own) becomes one line
naming the file and key, exit code 2. Importing this module is cheap (no torch): `python -m prep` starts quickly.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from trl import TrlParser

from paraphrx.errors import EXIT_BAD_INPUT, UserError
from paraphrx.limits import MAX_RECIPE_BYTES, MAX_YAML_DEPTH


class RecipeError(UserError):
    """A recipe or command line that cannot be parsed; the message is one line meant for the user."""


class _RecipeParser(TrlParser):
    """TrlParser whose argparse errors raise instead of printing usage and exiting."""

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
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed here",
                                              self.peek_event().start_mark)
        if self.depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                              self.peek_event().start_mark)
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


def read_recipe(path: Path, known_keys: set[str], collection_keys: set[str] = frozenset()) -> dict:
    """Load a flat recipe YAML and reject what TrlParser would reject with a long message or a traceback."""
    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of key: value, got {type(data).__name__}")
    unknown = [key for key in data if key != "env" and key not in known_keys]
    if unknown:
        raise RecipeError(f"{path}: unknown key {unknown[0]!r}" + (f" (and {unknown[1:]})" if unknown[1:] else ""))
    for key, value in data.items():
        if isinstance(value, (list, dict)) and key != "env" and key not in collection_keys:
            raise RecipeError(f"{path}: {key}: expected a single value, got a {type(value).__name__}")
    return data


def collection_fields(dataclass_types) -> set[str]:
    """Recipe keys whose type admits a list or a mapping (e.g. lora_target_modules, model_init_kwargs)."""
    names = set()
    for cls in dataclass_types:
        # The classes' own annotations: HfArgumentParser rewrites `field.type` (e.g. `dict | str | None` -> str).
        annotations = {k: v for klass in reversed(cls.__mro__) for k, v in vars(klass).get("__annotations__", {}).items()}
        for f in dataclasses.fields(cls):
            annotation = str(annotations.get(f.name, f.type)).lower()
            if any(word in annotation for word in ("list", "dict", "tuple", "any")):
                names.add(f.name)
    return names


def parse_recipe(argv: Sequence[str] | None = None, dataclass_types=None, **parser_kwargs) -> tuple:
    """Parse argv (default sys.argv[1:]) into `dataclass_types` instances (default: the training recipe's); raises
    RecipeError on bad input. `parser_kwargs` go to argparse (`prog`, `description` for --help)."""
    if dataclass_types is None:
        from paraphrx.config import RECIPE_DATACLASSES as dataclass_types
    argv = normalize_argv(sys.argv[1:] if argv is None else argv)
    parser = _RecipeParser(dataclass_types, **parser_kwargs)
    known = {action.dest for action in parser._actions}
    path = recipe_path(argv)
    if path is not None:
        read_recipe(path, known, collection_fields(dataclass_types))
    try:
        *parsed, remaining = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except RecipeError as err:
        raise RecipeError(f"{path or 'command line'}: {err}") from None
    except ValueError as err:  # the dataclasses' own __post_init__ checks (e.g. eval/save step mismatch)
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise RecipeError(f"{path or 'command line'}: {message}") from None
    if remaining:
        raise RecipeError(f"unknown option {remaining[0]!r}")
    return tuple(parsed)


def parse_recipe_or_exit(argv: Sequence[str] | None = None, dataclass_types=None, **parser_kwargs) -> tuple:
    """`parse_recipe` for entry points: a bad recipe prints one line to stderr and exits with code 2."""
    try:
        return parse_recipe(argv, dataclass_types, **parser_kwargs)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
