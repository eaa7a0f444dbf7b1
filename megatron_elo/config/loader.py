"""YAML -> typed ``RunConfig``, with dotted command-line overrides.

    cfg = load_config("configs/tiny_cpu.yaml", ["trainer.lr=2e-6", "opponents.strong.engine.tp=2"])

Every problem found (unknown key, wrong type, bad choice) is collected and raised together as one
``ConfigError`` whose lines each name the dotted field and what to do about it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from megatron_elo.config.schema import RunConfig


class ConfigError(ValueError):
    """A configuration problem. ``problems`` holds one line per offending field."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        bullet_list = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{bullet_list}")


# ---------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"trainer.lr=2e-6"`` -> (["trainer", "lr"], "2e-6" parsed as YAML). Types are fixed later."""
    if "=" not in text:
        raise ConfigError([f"override {text!r}: expected KEY=VALUE, e.g. trainer.lr=2e-6"])
    key, raw_value = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([f"override {text!r}: empty key segment; write dotted keys like trainer.lr=2e-6"])
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError([f"override {text!r}: value is not valid YAML ({err.__class__.__name__})"]) from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of the raw YAML mapping with each ``a.b.c=value`` set.

    A list segment is an index (``opponents.0.engine.tp=2``) or, for lists of named mappings, the
    item's ``name``, which may itself contain dots (``opponents.qwen2.5-14b.engine.tp=2``). Missing
    mappings are created, so defaults can be overridden without appearing in the YAML file.
    """
    result = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        parent: Any = None
        key: Any = None
        node: Any = result
        i = 0
        while i < len(path):
            if isinstance(node, list):
                index, used = _list_index(node, path, i, text)
                parent, key, i = node, index, i + used
            elif isinstance(node, dict):
                parent, key, i = node, path[i], i + 1
                if i < len(path) and node.get(key) is None:
                    node[key] = {}
            else:
                raise ConfigError([f"override {text!r}: {'.'.join(path[:i])} is a {type(node).__name__}, not a mapping"])
            node = parent[key] if i < len(path) else None
        parent[key] = value
    return result


def _list_index(items: list, path: list[str], start: int, text: str) -> tuple[int, int]:
    """(index into ``items``, path segments consumed) for the segment(s) at ``path[start]``."""
    segment = path[start]
    if segment.isdigit() and int(segment) < len(items):
        return int(segment), 1
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    for used in range(len(path) - start, 0, -1):  # longest match first: names may contain dots
        candidate = ".".join(path[start : start + used])
        if candidate in names:
            return names.index(candidate), used
    where = ".".join(path[: start + 1])
    raise ConfigError([
        f"override {text!r}: {where} matches no list item; use an index 0..{len(items) - 1} or a name of {names}"
    ])


# ---------------------------------------------------------------- building dataclasses


def build(cls: type, raw: Any, problems: list[str], where: str = "") -> Any:
    """Build dataclass ``cls`` from mapping ``raw``; append problems, return an instance or None."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where or '<top level>'}: expected a mapping of {cls.__name__} fields, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            problems.append(_unknown_key_message(str(key), list(fields), where))
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = coerce(hints[name], raw[name], problems, dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{dotted}: required field is missing")
    try:
        return cls(**kwargs)
    except TypeError:
        return None  # a required field was missing: already reported


def _unknown_key_message(key: str, known: list[str], where: str) -> str:
    dotted = f"{where}.{key}" if where else key
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {where + '.' if where else ''}{close[0]}?" if close else f"known keys: {', '.join(known)}"
    return f"{dotted}: unknown key; {hint}"


def coerce(hint: Any, value: Any, problems: list[str], where: str) -> Any:
    """Check ``value`` against type ``hint`` (converting where lossless) and return it."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return coerce(non_none[0], value, problems, where) if len(non_none) == 1 else value
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint_text = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{where}: {value!r} is not one of {choices}{hint_text}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__} {value!r}")
            return []
        return [coerce(args[0], item, problems, f"{where}.{i}") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
            return {}
        return {str(k): v for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return build(hint, value, problems, where)
    return _coerce_scalar(hint, value, problems, where)


def _coerce_scalar(hint: type, value: Any, problems: list[str], where: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    problems.append(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


# ---------------------------------------------------------------- entry points


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with a clear error when the file is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r} does not exist; pass a YAML file such as configs/tiny_cpu.yaml"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError([f"config file {str(path)!r} is not valid YAML: {err}"]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"config file {str(path)!r}: top level must be a mapping, got {type(raw).__name__}"])
    return _unshare(raw)


def _unshare(node: Any) -> Any:
    """A copy in which every mapping and list is its own object. YAML anchors (``*tiny_arch``)
    load as one shared object; without this an override of one alias would change them all."""
    if isinstance(node, dict):
        return {key: _unshare(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshare(value) for value in node]
    return node


def config_from_dict(raw: dict) -> RunConfig:
    """Build a ``RunConfig`` from a raw mapping; raise ``ConfigError`` listing every type problem."""
    problems: list[str] = []
    cfg = build(RunConfig, raw, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read ``path``, apply dotted ``overrides`` and build the typed config (no cross-field checks:
    see ``megatron_elo.config.validate``)."""
    return config_from_dict(apply_overrides(read_yaml(path), list(overrides)))


def config_to_dict(cfg: Any) -> dict:
    """The config as plain Python (for YAML dumps and MLflow params)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML text, loadable again by ``load_config``."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def flatten(mapping: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "l": [{"x": 2}]}`` -> ``{"a.b": 1, "l.0.x": 2}``."""
    flat: dict[str, Any] = {}
    items = mapping.items() if isinstance(mapping, dict) else enumerate(mapping)
    for key, value in items:
        dotted = f"{prefix}{key}"
        if isinstance(value, (dict, list)) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
