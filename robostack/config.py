"""YAML configs to typed dataclasses, with errors a person can act on.

A config is a plain YAML mapping; the code that reads it declares what it expects as (nested) dataclasses.
``load_config(TaskConfig, config_path("tasks", "go2-walk.yaml"), ["reward.scale=2"])`` loads the file,
applies command-line overrides and checks every key and value against the dataclass annotations:

* an unknown key names its full dotted path and the file, and suggests close matches;
* a value of the wrong type names the dotted key, the expected type and the value it got;
* a missing key keeps the field's default, or is an error if the field has none.

Supported annotations: ``int``, ``float`` (an int is accepted), ``bool`` (only real booleans), ``str``,
``Literal[...]``, fixed tuples (``tuple[float, float]``) and ``tuple[X, ...]`` (from YAML lists),
``list[X]``, ``dict[str, X]``, ``X | None``, ``Path``, ``Any`` and nested dataclasses. Annotations may be
strings (``from __future__ import annotations``): they are resolved with ``typing.get_type_hints``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

__all__ = [
    "ConfigError",
    "load_yaml",
    "from_dict",
    "apply_overrides",
    "load_config",
    "to_dict",
    "config_path",
]

T = TypeVar("T")

_REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "robostack"


class ConfigError(ValueError):
    """A config file or override is wrong; the message says where and how.

    ``key`` is the dotted key at fault (when there is one) and ``source`` the file (or "file + overrides").
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        super().__init__(message)
        self.key = key
        self.source = source


# --------------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (plain YAML 1.1 wants ``1.0e-3``) and refuses duplicate keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(exc: yaml.YAMLError, where: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return ConfigError(f"{where}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}", source=where)
    return ConfigError(f"{where}: invalid YAML: {problem}", source=where)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML file whose top level is a mapping (an empty file reads as ``{}``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", source=str(path)) from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a file: {path}", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}", source=str(path)) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys to values, got {type(data).__name__}", source=str(path)
        )
    return data


# ------------------------------------------------------------------------------------------ typing


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any value"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union or origin is types.UnionType:
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if args else getattr(origin, "__name__", str(tp))
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


class _Mismatch(Exception):
    """Internal: a value does not fit a type (raised deep, turned into a ConfigError with context)."""

    def __init__(self, key: str, expected: Any, value: Any, detail: str = ""):
        super().__init__(key)
        self.key, self.expected, self.value, self.detail = key, expected, value, detail


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:  # an annotation that does not resolve is a bug in the dataclass, say which
        raise TypeError(f"cannot resolve the field annotations of {cls.__qualname__}: {exc}") from exc


def _build(cls: type, data: Any, key: str, source: str) -> Any:
    if not isinstance(data, Mapping):
        raise _Mismatch(key, cls, data)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in data:
        if not isinstance(name, str) or name not in fields:
            dotted = _join(key, name)
            matches = difflib.get_close_matches(str(name), list(fields), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(_join(key, m)) for m in matches)}?" if matches else ""
            valid = ", ".join(fields) or "none"
            where = f" (in '{key}')" if key else ""
            raise ConfigError(
                f"{source}: unknown key '{dotted}'{hint} (valid keys{where}: {valid})", key=dotted, source=source
            )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints.get(name, Any), data[name], _join(key, name), source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            dotted = _join(key, name)
            raise ConfigError(
                f"{source}: missing required key '{dotted}' ({_type_name(hints.get(name, Any))})",
                key=dotted,
                source=source,
            )
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    if tp is Any or tp is object:
        return value
    if isinstance(tp, TypeVar):
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, key, source)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        first_error: Exception | None = None
        for arg in candidates:
            try:
                return _convert(arg, value, key, source)
            except (_Mismatch, ConfigError) as exc:
                first_error = first_error or exc
        if len(candidates) == 1 and first_error is not None:
            # Optional[X]: a problem deeper inside X (a nested key, a tuple item) is the most precise report
            if not (isinstance(first_error, _Mismatch) and first_error.key == key):
                raise first_error
            raise _Mismatch(key, tp, value, first_error.detail)
        raise _Mismatch(key, tp, value)

    if origin is Literal:
        for allowed in args:
            if type(value) is type(allowed) and value == allowed:
                return value
        raise _Mismatch(key, tp, value)

    if origin is typing.Annotated:
        return _convert(args[0], value, key, source)

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch(key, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch(key, tp, value)
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch(key, tp, value)
    if isinstance(tp, type) and issubclass(tp, Path):
        if isinstance(value, (str, Path)):
            return tp(value)
        raise _Mismatch(key, tp, value)

    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(key, tp, value)
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value))
        if args == ((),):  # tuple[()]
            args = ()
        if len(value) != len(args):
            raise _Mismatch(key, tp, value, f"expected {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))

    if tp is list or origin is list or origin is Sequence or origin is typing.Sequence:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(key, tp, value)
        if not args:
            return list(value)
        return [_convert(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]

    if tp is dict or origin is dict or origin is Mapping or origin is typing.Mapping:
        if not isinstance(value, Mapping):
            raise _Mismatch(key, tp, value)
        if not args:
            return dict(value)
        key_tp, val_tp = args
        out = {}
        for k, v in value.items():
            sub = _join(key, k)
            try:
                k2 = _convert(key_tp, k, sub, source)
            except _Mismatch:
                raise _Mismatch(sub, key_tp, k, "a key of the wrong type") from None
            out[k2] = _convert(val_tp, v, sub, source)
        return out

    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch(key, tp, value)
    raise TypeError(f"robostack.config does not support the annotation {tp!r} (field '{key}')")


def from_dict(cls: type[T], data: Mapping[str, Any], source: str) -> T:
    """Build dataclass ``cls`` from ``data`` (nested mappings for nested dataclasses), checking every value.

    ``source`` names where the data came from (a file path, "file + overrides"); it starts every message.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    try:
        return _build(cls, data, "", source)
    except _Mismatch as exc:
        what = f"'{exc.key}'" if exc.key else "the top level"
        detail = f" ({exc.detail})" if exc.detail else ""
        raise ConfigError(
            f"{source}: {what} must be {_type_name(exc.expected)}, got {_show(exc.value)}{detail}",
            key=exc.key or None,
            source=source,
        ) from None


# --------------------------------------------------------------------------------------- overrides


def _parse_override(item: str) -> tuple[list[str], Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (for example ppo.lr=3e-4)")
    key, _, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p.strip() for p in parts):
        raise ConfigError(f"override {item!r} has an empty key; write it as key=value or a.b.c=value")
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"override {item!r}: cannot parse the value {text!r}: {problem}") from None
    return [p.strip() for p in parts], value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str], source: str) -> dict:
    """Return a copy of ``data`` with each ``a.b.c=value`` override applied (values parsed as YAML).

    Keys that do not exist are created, so ``from_dict`` reports them as unknown with a suggestion.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    out = copy.deepcopy(dict(data))
    for item in overrides:
        parts, value = _parse_override(item)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                parent = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"{source}: override {item!r}: '{parent}' is a value ({_show(child)}), not a mapping",
                    key=".".join(parts),
                    source=source,
                )
            node = child
        node[parts[-1]] = value
    return out


def load_config(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """``load_yaml`` + ``apply_overrides`` + ``from_dict``; errors name the file and, if so, the override."""
    return build_config(cls, load_yaml(path), str(path), overrides)


def build_config(cls: type[T], data: Mapping[str, Any], source: str, overrides: Sequence[str] = ()) -> T:
    """``apply_overrides`` + ``from_dict`` on ``data`` read from ``source`` (a file, a bundle's metadata)."""
    overrides = list(overrides)
    source = f"{source} + overrides" if overrides else source
    data = apply_overrides(data, overrides, source)
    try:
        return from_dict(cls, data, source)
    except ConfigError as exc:
        culprit = _override_for(exc.key, overrides)
        if culprit is None:
            raise
        raise ConfigError(f"{exc} [from the command-line override {culprit!r}]", key=exc.key, source=source) from None


def _override_for(key: str | None, overrides: Sequence[str]) -> str | None:
    if not key:
        return None
    key = re.sub(r"\[\d+\]", "", key)
    for item in reversed(overrides):
        okey = item.partition("=")[0].strip()
        if okey == key or okey.startswith(key + ".") or key.startswith(okey + "."):
            return item
    return None


# ------------------------------------------------------------------------------------------- output


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML-safe data: like ``dataclasses.asdict`` but tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {to_dict(k) if not isinstance(k, str) else k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ----------------------------------------------------------------------------------------- location


def _config_roots() -> list[Path]:
    roots = [_REPO_ROOT / "configs"]  # a source checkout or an editable install
    prefixes = [Path(sys.prefix)]
    try:  # a colcon/ament install: share/robostack from the ament index
        from ament_index_python.packages import get_package_share_directory

        roots.append(Path(get_package_share_directory(PACKAGE)) / "configs")
    except Exception:  # not installed, or robostack not in the index: fine
        pass
    for prefix in prefixes:
        roots.append(prefix / "share" / PACKAGE / "configs")  # pip install: data_files under the prefix
    seen: list[Path] = []
    for root in roots:
        if root not in seen:
            seen.append(root)
    return seen


def config_path(*parts: str | Path) -> Path:
    """Path of ``configs/<parts...>``: the repo's configs/ first, then the installed share/robostack/configs."""
    if not parts:
        raise ConfigError("config_path needs at least one path part, e.g. config_path('tasks', 'go2-walk.yaml')")
    rel = Path(*parts)
    roots = _config_roots()
    for root in roots:
        candidate = root / rel
        if candidate.is_file():
            return candidate
    hint = ""
    for root in roots:
        folder = (root / rel).parent
        if folder.is_dir():
            names = sorted(p.name for p in folder.iterdir() if p.is_file())
            # compare stems of files with the same suffix: a shared ".yaml" must not make names look alike
            stems = {Path(n).stem: n for n in names if Path(n).suffix == rel.suffix}
            matches = [stems[m] for m in difflib.get_close_matches(rel.stem, list(stems), n=3, cutoff=0.6)]
            if matches:
                hint = f"; did you mean {' or '.join(matches)}?"
            elif names:
                hint = f"; available there: {', '.join(names)}"
            break
    looked = ", ".join(str(r) for r in roots)
    raise ConfigError(f"no config file configs/{rel.as_posix()}{hint} (looked in {looked})")
