"""Command-line options declared once, on the config dataclasses.

A config field made with `opt(...)` carries its flag, help and argparse details; the
CLI builds its parsers from them (`add_options`), builds configs from parsed arguments
(`config_from`), and validation messages name the same flag (`flag_of`). So an option
is spelled in one place: its field.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from typing import Any

_MISSING = dataclasses.MISSING
EXIT_OK, EXIT_ERROR, EXIT_RESUMABLE, EXIT_INTERRUPTED = 0, 2, 3, 130
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
DEFAULT_STORE = "checkpoints/store"


def parser(prog: str, description: str, log_level: str = "INFO") -> argparse.ArgumentParser:
    """A command's parser, with its --log-level."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--log-level", default=log_level, choices=LOG_LEVELS,
                   help=f"logging detail [default: {log_level}]")
    return p


def finish(result) -> int:
    """Print a stage's result; its exit status: 0 complete, 3 stopped early (resumable)."""
    print(result.summary())
    return EXIT_OK if result.complete else EXIT_RESUMABLE


def size_option(text: str) -> int:
    """A byte count on the command line: 8G, 512M, 1.5GB, 1000."""
    from .utils import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def opt(default: Any = _MISSING, help: str = "", *, flag: str | None = None,
        group: str | None = None, default_factory: Any = _MISSING, shown: str | None = None,
        to_config=None, **argparse_kwargs) -> Any:
    """A config field with its command-line option.

    Args:
        default / default_factory: the field's default (also the option's).
        help: the option's help text.
        flag: the option's name (default: --field-name).
        group: the help section it is listed under.
        shown: the default as `--help` shows it where the value is not the best way
            (e.g. "8G" for a byte count).
        to_config: turns the parsed value into the field's value (e.g. list -> tuple).
        argparse_kwargs: type, choices, action, nargs, metavar... as for add_argument.
    """
    meta = {"cli": {"help": help, "flag": flag, "group": group, "shown": shown,
                    "to_config": to_config, "kwargs": argparse_kwargs}}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _cli_fields(cls) -> list[dataclasses.Field]:
    """The fields that are options: a subclass's own first, those it inherits last (so
    that `--help` lists a stage's options before the run control every stage has)."""
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)
                 for f in dataclasses.fields(base)}
    fields = [f for f in dataclasses.fields(cls) if "cli" in f.metadata]
    return [f for f in fields if f.name not in inherited] + \
        [f for f in fields if f.name in inherited]


def dest_of(cls_or_obj, name: str) -> str:
    """Where argparse keeps a field's value: its flag as an identifier."""
    return flag_of(cls_or_obj, name).lstrip("-").replace("-", "_")


def flag_of(cls_or_obj, name: str) -> str:
    """The command-line flag of a config field: `flag_of(ExtractConfig, "workers")`."""
    f = next(f for f in dataclasses.fields(cls_or_obj) if f.name == name)
    cli = f.metadata.get("cli", {})
    return cli.get("flag") or "--" + name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def add_options(parser: argparse.ArgumentParser, cls, only: Iterable[str] | None = None,
                skip: Iterable[str] = (), defaults: dict | None = None) -> None:
    """Add the options of config class `cls` to `parser` (the fields in `only`, or all
    but those in `skip`), in groups, each with its default. `defaults` overrides some
    (e.g. None where a later step chooses)."""
    only, skip, defaults = set(only or ()), set(skip), defaults or {}
    groups: dict[str, Any] = {}
    for f in _cli_fields(cls):
        if (only and f.name not in only) or f.name in skip:
            continue
        cli = f.metadata["cli"]
        target = parser
        if cli["group"]:
            if cli["group"] not in groups:
                groups[cli["group"]] = parser.add_argument_group(cli["group"])
            target = groups[cli["group"]]
        kwargs = {**cli["kwargs"], "default": defaults.get(f.name, _default(f))}
        if kwargs.get("action") in ("extend", "append") and kwargs["default"] is not None:
            kwargs["default"] = list(kwargs["default"])  # argparse extends it in place
        help_text = cli["help"]
        if cli["shown"] is not None:
            help_text += f" [default: {cli['shown']}]"
        elif kwargs["default"] not in (None, False, ()) and "[default" not in help_text \
                and kwargs.get("action") not in ("store_true", "store_false"):
            help_text += " [default: %(default)s]"
        target.add_argument(flag_of(cls, f.name), dest=dest_of(cls, f.name), help=help_text,
                            **kwargs)


def config_from(cls, args: argparse.Namespace, **overrides):
    """An instance of config class `cls` from parsed arguments: each option field found in
    `args` (after its `to_config`), then `overrides`."""
    values = {}
    for f in _cli_fields(cls):
        dest = dest_of(cls, f.name)
        if f.name in overrides or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        convert = f.metadata["cli"]["to_config"]
        values[f.name] = convert(value) if convert and value is not None else value
    return cls(**values, **overrides)
