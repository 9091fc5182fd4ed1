"""The one config loader: plain-Python config files, their variants, and ``key=value`` overrides.

    load_config("configs/shapes_tiny.py")                      # the file's get_config()
    load_config("configs/shapes_tiny.py:iddpm,pixels")         # get_config("iddpm,pixels"): a variant
    load_config("configs/shapes_tiny.py", ["train.steps=300"])  # an override

Every command line that takes a config uses the same syntax (:func:`add_config_arguments`,
:func:`parse_config_args`): ``--config FILE[:VARIANT]`` plus any number of ``--config.a.b=value``
(or ``--config.a.b value``). A value is parsed by the type of the field it replaces: ints, floats, booleans
(true/false/1/0/yes/no), strings, tuples and lists (Python literals such as ``(1, 2, 2)``), None.
Config files are not an installed package: they are imported by path, and may extend a sibling with
:func:`load_config_module` (big_vision style).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import ml_collections

from vidjax.errors import ConfigError, MissingFileError


def load_config_module(path: str | Path) -> ModuleType:
    """Import a config file by path; config files use it to extend a sibling (big_vision style).

    A relative path is read from the working directory, else from the checkout vidjax runs from, so that
    ``configs/...`` named inside a config (a stage-0 VAE's ``train_config``) also works from another directory."""
    path = Path(path)
    checkout = Path(__file__).resolve().parents[1] / path
    if not path.is_file() and not path.is_absolute() and checkout.is_file():
        path = checkout
    if not path.is_file():
        raise MissingFileError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"vidjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{path}: a config file defines get_config(variant=None) -> ConfigDict")
    return module


def load_config(spec: str | Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """``"file.py"`` or ``"file.py:variant"`` -> that file's ``get_config(variant)``, then ``overrides``
    (``"section.key=value"`` strings) applied in order."""
    file, _, variant = str(spec).partition(":")
    config = load_config_module(file).get_config(variant or None)
    for text in overrides:
        apply_override(config, text)
    return config


# --------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------


def _keys(node: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, ml_collections.ConfigDict):
            out += _keys(v, f"{prefix}{k}.")
    return out


def apply_override(config: ml_collections.ConfigDict, text: str) -> None:
    """Set ``key=value`` (``key`` dotted) in ``config``; the value is parsed by the type of the field."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--config.{text}: expected --config.KEY=VALUE")
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        part = parts[i] = _field(node, part)
        child = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(child, ml_collections.ConfigDict):
            where = ".".join(parts[:i]) or "the config"
            sections = sorted(k for k, v in node.items() if isinstance(v, ml_collections.ConfigDict))
            what = "is a field, not a section" if part in node else "has no section"
            raise ConfigError(f"--config.{key}: {where} {what} {part!r}" +
                              (f"; its sections are {', '.join(sections)}" if part not in node else ""))
        node = child
    leaf = _field(node, parts[-1])
    if leaf not in node:
        close = difflib.get_close_matches(key, _keys(config), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"--config.{key}: no such field{hint}")
    old = node[leaf]
    if isinstance(old, ml_collections.ConfigDict) and value.strip().startswith("{"):  # a whole table, e.g. buckets
        try:
            table = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            table = None
        if not isinstance(table, dict):
            raise ConfigError(f"--config.{key}={value.strip()}: expected a Python dict literal")
        node[leaf] = table
        return
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{key} is a section; set one of its fields, e.g. --config.{key}."
                          f"{next(iter(old.keys()), 'name')}=...")
    node[leaf] = parse_value(value, old, key)


def _field(node, name: str):
    """``name`` as a key of ``node``: tables keyed by numbers (``bucket_config.240p.51``) use int keys."""
    if isinstance(node, ml_collections.ConfigDict) and name not in node and name.lstrip("-").isdigit() \
            and int(name) in node:
        return int(name)
    return name


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def parse_value(text: str, old, key: str = "value"):
    """``text`` as the type of ``old`` (the field's current value); a one-line ConfigError otherwise."""
    text = text.strip()
    if isinstance(old, bool):
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"--config.{key}={text}: expected true or false")
    if isinstance(old, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--config.{key}={text}: expected an integer") from None
    if isinstance(old, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--config.{key}={text}: expected a number") from None
    if isinstance(old, str):
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text
    if isinstance(old, (tuple, list)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, (int, float, str)):
            value = (value,)
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"--config.{key}={text}: expected a tuple such as {tuple(old) or '(1, 2)'}")
        return type(old)(value)
    try:  # None or another type: a Python literal, else the text itself
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# --------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------

OVERRIDE_HELP = ("any config field: --config.SECTION.KEY=VALUE (e.g. --config.train.steps=300 "
                 "--config.model.patch='(1, 2, 2)'); a typo is an error that suggests the name")


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = None, required: bool = True) -> None:
    """``--config FILE[:VARIANT]`` (and, documented in the help, the ``--config.KEY=VALUE`` overrides); with
    ``required=False`` and no default the config is optional (:func:`parse_config_args` then returns None)."""
    parser.add_argument("--config", default=default, required=required and default is None, metavar="FILE[:VARIANT]",
                        help="a config file, optionally with variants after a colon" +
                             (f" (default: {default})" if default else ""))
    parser.epilog = ((parser.epilog + "\n") if parser.epilog else "") + "Overrides: " + OVERRIDE_HELP


def parse_config_args(parser: argparse.ArgumentParser,
                      argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, ml_collections.ConfigDict | None]:
    """Parse ``argv`` (default ``sys.argv[1:]``): the parser's own flags, ``--config`` and the overrides.
    Returns (namespace, config)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{arg}: expected {arg}=VALUE")
                body, i = f"{body}={argv[i + 1]}", i + 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    args = parser.parse_args(rest)
    if args.config is None:
        if overrides:
            raise ConfigError(f"--config.{overrides[0]}: an override needs a --config file")
        return args, None
    return args, load_config(args.config, overrides)


__all__ = ["add_config_arguments", "apply_override", "load_config", "load_config_module", "parse_config_args",
           "parse_value"]
