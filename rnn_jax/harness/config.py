"""The one way from a frozen dataclass config to a command line, a ``key=value`` list or a config file.

An application declares its settings once, as a frozen dataclass whose fields use :func:`field`::

    @dataclasses.dataclass(frozen=True)
    class MyConfig:
        hidden_size: int = field(128, "hidden units per layer", aliases=("hidden",))
        unroll: int | None = field(None, "scan steps per loop iteration (auto: run's choice)", none="auto")

and gets, with no further code:

- ``add_config_arguments(parser, MyConfig)``: ``--hidden-size`` (and the alias ``--hidden``), typed from
  the annotation, with its default and help in ``--help``; bools as ``--flag/--no-flag``; ``Optional``
  fields read ``none`` (or the field's ``none=`` word, e.g. ``auto``) as ``None``. Flags not given stay out
  of the namespace, so ``config_from_args(MyConfig, namespace, base)`` lays the given flags over any base
  (the defaults, or a checkpoint's config on resume).
- ``config_from_overrides(MyConfig, ["hidden_size=256", "steps=300"], config_file)``: the experiment
  scripts' form; ``--config FILE`` (JSON, or TOML) is read first, then the ``key=value`` pairs on top
  (:func:`config_from_argv` parses both from ``sys.argv``).
- ``migrate_config(MyConfig, stored)``: a config stored by an older release, its old names (the aliases)
  translated, read back.

Errors raised here name config fields (``hidden_size``), never flags: the same message serves the command
line and Python. The ``steps``/``minutes`` pair is one budget: giving one clears the other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rnn_jax.errors import UserError

__all__ = [
    "field",
    "add_config_arguments",
    "config_from_args",
    "config_from_overrides",
    "config_from_argv",
    "read_config_file",
    "replace_config",
    "migrate_config",
    "config_to_dict",
    "check_field_types",
    "CONFIG_FORMAT",
]

CONFIG_FORMAT = 2
"""Stored configs carry ``config_format``; one without it is from the release whose names are the aliases."""

BUDGET_FIELDS = ("steps", "minutes")
_NONE_WORDS = ("none", "null", "auto")


def field(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    aliases: Sequence[str] = (),
    none: str = "none",
    choices: Sequence[Any] | None = None,
    cli: bool = True,
    metavar: str | None = None,
    required: bool = False,
):
    """A dataclass field that knows its command line: one line of ``help``, old names (``aliases``, given
    without dashes, e.g. ``"hidden"``), the word that spells ``None`` (``none``), ``choices``, whether it
    is a flag at all (``cli=False`` for settings only Python can give, e.g. a whole text), and whether the
    command line must give it (``required``)."""
    metadata = {"help": help, "aliases": tuple(aliases), "none": none, "choices": choices, "cli": cli}
    metadata.update(metavar=metavar, required=required)
    return dataclasses.field(default=default, metadata=metadata)


def _hints(config_type: type) -> dict[str, Any]:
    return typing.get_type_hints(config_type)


def _base_type(annotation) -> tuple[type, bool]:
    """``(int, True)`` for ``int | None``; ``(bool, False)`` for ``bool``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return annotation, False


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _converter(f: dataclasses.Field, annotation):
    """``str -> value`` for a field: its base type, with the ``None`` words mapped to ``None``."""
    base, optional = _base_type(annotation)
    parse = _parse_bool if base is bool else base
    none_word = f.metadata.get("none", "none")

    def convert(text: str):
        if optional and text.strip().lower() in (*_NONE_WORDS, none_word):
            return None
        return parse(text)

    convert.__name__ = base.__name__ if isinstance(base, type) else "value"  # argparse's "invalid int value"
    return convert


def _show(f: dataclasses.Field, value) -> str:
    if value is None:
        return f.metadata.get("none", "none")
    return repr(value) if isinstance(value, str) and value == "" else str(value)


def _metavar(f: dataclasses.Field, annotation) -> str:
    base, _ = _base_type(annotation)
    return {int: "N", float: "X"}.get(base, f.name.split("_")[-1].upper())


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _fields(config_type: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config_type) if f.init]


def add_config_arguments(parser: argparse.ArgumentParser, config_type: type, *, exclude: Sequence[str] = (),
                         defaults: Any = None) -> None:  # fmt: skip
    """Add one ``--field-name`` flag (plus its aliases) per field of ``config_type``.

    Flags not given are absent from the parsed namespace (``argparse.SUPPRESS``), so that
    :func:`config_from_args` can lay them over any base; ``--help`` shows the default of ``defaults``
    (a config instance; ``config_type()`` if omitted) and the field's help line.
    """
    shown = defaults if defaults is not None else config_type()
    hints = _hints(config_type)
    for f in _fields(config_type):
        if f.name in exclude or not f.metadata.get("cli", True):
            continue
        flags = [_flag(f.name), *(_flag(a) for a in f.metadata.get("aliases", ()))]
        help_text = f.metadata.get("help", "")
        default = getattr(shown, f.name)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if hints[f.name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _converter(f, hints[f.name])
            kwargs["metavar"] = f.metadata.get("metavar") or _metavar(f, hints[f.name])
            if f.metadata.get("choices"):
                kwargs["choices"], kwargs["metavar"] = f.metadata["choices"], None
        action = parser.add_argument(*flags, required=f.metadata.get("required", False), **kwargs)
        action.help = f"{help_text} ({'required' if action.required else 'default ' + _show(f, default)})".lstrip()
    _suggest_flags(parser)


def _suggest_flags(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` refuse an unknown flag itself, naming the closest one it knows (``difflib``): as a
    subcommand's parser it would otherwise pass the flag up to a parent that knows nothing to suggest."""
    import difflib

    if getattr(parser, "_suggests_flags", False):
        return
    parse_known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, extras = parse_known(args, namespace)
        unknown = [a for a in extras if a.startswith("--")]
        if unknown:
            known = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
            flag = unknown[0].split("=", 1)[0]
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; {parser.prog} --help lists the flags"
            parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return namespace, extras

    parser.parse_known_args = parse_known_args
    parser._suggests_flags = True


def replace_config(base, changes: Mapping[str, Any]):
    """``dataclasses.replace(base, **changes)``, where giving one of ``steps``/``minutes`` clears the other."""
    changes = dict(changes)
    for name, other in (BUDGET_FIELDS, BUDGET_FIELDS[::-1]):
        if name in changes and hasattr(base, other):
            changes.setdefault(other, None)
    return dataclasses.replace(base, **changes)


def config_from_args(config_type: type, namespace: argparse.Namespace | Mapping, base=None):
    """The config of the flags given in ``namespace`` laid over ``base`` (``config_type()`` by default)."""
    given = dict(vars(namespace) if isinstance(namespace, argparse.Namespace) else namespace)
    names = {f.name for f in _fields(config_type)}
    return replace_config(base if base is not None else config_type(), {k: v for k, v in given.items() if k in names})


def _alias_table(config_type: type) -> dict[str, str]:
    """Every accepted key (field names, aliases, dashed spellings) -> field name."""
    table: dict[str, str] = {}
    for f in _fields(config_type):  # names first: an alias that spells another field's name wins (``text``)
        table[f.name] = table[f.name.replace("_", "-")] = f.name
    for f in _fields(config_type):
        for alias in f.metadata.get("aliases", ()):
            table[alias] = table[alias.replace("_", "-")] = f.name
    return table


def _unknown(config_type: type, key: str) -> UserError:
    valid = ", ".join(f.name for f in _fields(config_type))
    return UserError(f"{config_type.__name__} has no field {key!r}; valid fields: {valid}")


def _check_type(config_type: type, name: str, value):
    """A value read from a file must have the field's type (an int is accepted for a float)."""
    base, optional = _base_type(_hints(config_type)[name])
    if value is None and optional:
        return value
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"{name} must be of type {getattr(base, '__name__', base)}, got {value!r}")
    return value


def check_field_types(config) -> None:
    """Every field of ``config`` holds a value of its annotated type (as a config file's must): a config read
    back from a file (a checkpoint's) with ``hidden_size: "16"`` or ``1e9`` is a :class:`UserError`."""
    config_type = type(config)
    for f in _fields(config_type):
        base, _ = _base_type(_hints(config_type)[f.name])
        if base in (int, float, str, bool):
            _check_type(config_type, f.name, getattr(config, f.name))


def _typed_changes(config_type: type, items: Mapping[str, Any], *, from_text: bool) -> dict[str, Any]:
    table, hints = _alias_table(config_type), _hints(config_type)
    fields = {f.name: f for f in _fields(config_type)}
    changes = {}
    for key, value in items.items():
        name = table.get(key)
        if name is None:
            raise _unknown(config_type, key)
        if from_text:
            try:
                value = _converter(fields[name], hints[name])(value)
            except ValueError as err:
                raise UserError(f"{name}: cannot read {value!r} ({err})") from None
        changes[name] = _check_type(config_type, name, value)
    return changes


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The table of a JSON (``.json``) or TOML (``.toml``, Python >= 3.11) config file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read the config file {path}: {err.strerror or err}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            table = tomllib.loads(data.decode("utf-8"))
        else:
            table = json.loads(data)
    except ImportError:
        raise UserError(f"{path}: TOML needs Python 3.11 or later; write the config as JSON") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a valid {path.suffix.lstrip('.') or 'JSON'} config: {err}") from None
    if not isinstance(table, dict):
        raise UserError(f"{path} must hold a table of field = value, got {type(table).__name__}")
    return table


def config_from_overrides(config_type: type, overrides: Sequence[str] = (), config_file=None, base=None):
    """``base`` (``config_type()`` by default), then the fields of ``config_file``, then ``key=value`` pairs.

    Keys are field names or their aliases; values are read as the field's type (``none``/``auto`` for
    ``None``). An unknown key is a :class:`UserError` listing the valid field names.
    """
    config = base if base is not None else config_type()
    if config_file is not None:
        config = replace_config(config, _typed_changes(config_type, read_config_file(config_file), from_text=False))
    pairs = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"expected key=value, got {item!r}")
        pairs[key.strip()] = value
    return replace_config(config, _typed_changes(config_type, pairs, from_text=True))


def config_from_argv(config_type: type, argv: Sequence[str], base=None):
    """For experiment scripts: ``[--config FILE] key=value ...`` -> the config (see :func:`config_from_overrides`)."""
    argv, config_file = list(argv), None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UserError("--config needs a file: --config FILE.json (or .toml)")
        config_file = argv[i + 1]
        del argv[i : i + 2]
    return config_from_overrides(config_type, argv, config_file, base)


def config_to_dict(config) -> dict[str, Any]:
    """The fields of ``config`` as a JSON-able dict, as checkpoints store them."""
    return dataclasses.asdict(config)


def migrate_config(config_type: type, stored: Mapping[str, Any], config_format: int | None = None):
    """A config stored by a checkpoint, read into ``config_type``.

    Configs written before :data:`CONFIG_FORMAT` 2 used the names that are now aliases (``hidden``,
    ``batch``, ``lr``, ``clip``...): an alias wins over a field of the same name there (the old ``text``
    was a path). Keys no field knows (settings since removed) are dropped.
    """
    old = config_format is None or config_format < CONFIG_FORMAT
    aliases = {a: f.name for f in _fields(config_type) for a in f.metadata.get("aliases", ())}
    names = {f.name for f in _fields(config_type)}
    changes = {}
    for key, value in stored.items():
        if old and key in aliases:
            changes[aliases[key]] = value
        elif key in names:
            changes[key] = value
    return dataclasses.replace(config_type(), **changes)
