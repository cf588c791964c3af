"""Command-line plumbing shared by `skinscreen-trainer` and `skinscreen-research`.

One option per field of a pydantic configuration, validated by pydantic
afterwards; the shell line that repeats a run; and the error handling of a
command's `main`. Imports nothing heavy: `skinscreen-trainer models list`
must start without torch.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import typing
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from skinscreen.core.card import ModelIntegrityError
from skinscreen.core.pad_ufes import DataError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class UsageError(Exception):
    """Bad input from the command line; the message is for the user."""


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_options(
    parser: argparse.ArgumentParser, model: type[BaseModel], exclude: Collection[str] = ()
) -> None:
    """One option per field of `model` but those in `exclude`; pydantic validates the
    strings afterwards."""
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        choices = None
        if typing.get_origin(info.annotation) is typing.Literal:
            choices = typing.get_args(info.annotation)
        default = "required" if info.is_required() else f"default {_shown(info.default)}"
        help_text = f"{info.description + ' ' if info.description else ''}({default})"
        if name == "report_betas":
            help_text = "comma-separated betas of the F-beta scores to report " + f"({default})"
        elif _is_list(info):
            help_text = f"{info.description} Comma-separated. ({default})"
        parser.add_argument(
            option(name), dest=name, choices=choices, help=help_text, required=info.is_required()
        )


def add_run_options(parser: argparse.ArgumentParser, publishes: bool = True) -> None:
    """Where a run goes: --runs, and for a run that publishes a model, --store and --no-publish."""
    parser.add_argument("--runs", default="runs", help="folder for run folders (default runs)")
    if publishes:
        parser.add_argument(
            "--store", default="var/models", help="model store to publish into (default var/models)"
        )
        parser.add_argument("--no-publish", action="store_true", help="do not publish the model")


def _is_list(info: FieldInfo) -> bool:
    return typing.get_origin(info.annotation) is tuple


def _shown(value: object) -> str:
    """A value as the command line takes it."""
    if isinstance(value, tuple):
        return ",".join(_shown(item) for item in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def model_from_args(model: type[ConfigT], args: argparse.Namespace) -> ConfigT:
    """Validate the options of `model`'s fields that were given; the rest keep their defaults."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        values[name] = value.split(",") if _is_list(info) else value
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise UsageError(_describe(error)) from None


def command_line(program: str, *configs: BaseModel, extra: Sequence[str] = ()) -> str:
    """The shell command that repeats a run: every setting that is not at its default.

    `program` is the command itself, e.g. "skinscreen-research dermoscopy"."""
    parts = [program]
    for config in configs:
        for name, info in type(config).model_fields.items():
            value = getattr(config, name)
            if info.is_required() or value != info.default:
                parts.append(f"{option(name)} {shlex.quote(_shown(value))}")
    parts += extra
    return " \\\n    ".join(parts)


def _describe(error: ValidationError) -> str:
    lines = ["invalid training configuration:"]
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"])
        name = option(location) if location else "configuration"
        given = problem.get("input")
        shown = f" (given {given!r})" if location and not isinstance(given, dict) else ""
        lines.append(f"  {name}: {problem['msg']}{shown}")
    return "\n".join(lines)


def _is_user_error(error: Exception) -> bool:
    """Errors whose message is for the user: exit code 2 and the message, no traceback."""
    kinds: tuple[type[Exception], ...] = (
        UsageError,
        DataError,
        ModelIntegrityError,
        OSError,
        ValueError,
    )
    # ExportError lives beside torch; when it was raised, its module is loaded, and looking it
    # up here keeps this module (and a command that never exports) free of torch.
    export = sys.modules.get("skinscreen.trainer.export")
    if export is not None:
        kinds += (export.ExportError,)
    return isinstance(error, kinds)


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None, program: str) -> int:
    """Parse, set up logging, call the chosen command's handler; a user error exits with 2.

    A command whose options are known only once it runs (`train`: its recipe's) sets
    `passes_on_options`; it finds the options it did not parse in `args.options`.
    """
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passes_on_options", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.options = rest
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except Exception as error:
        if not _is_user_error(error):
            raise
        print(f"{program} {args.command}: error: {error}", file=sys.stderr)
        return 2
