"""Every YAML file a person writes, read the same way into a typed (pydantic) object, with one error format::

    <file>:<line>: <key>: <what is wrong>

e.g. ``line_config/glass.yaml:14: cameras.2.overflow: Input should be 'drop_oldest', 'drop_newest' or 'block'``.
Used for the line file (``rtvp_edge.config``), the rig file (``rtvp_edge.rig``), the enrolment examples
(``rtvp_edge.enrolment``), the training config (``training.config``) and the export vocabulary file
(``export.embeddings``); training and export import this module, never the reverse.

The reading is strict: duplicate keys are errors (PyYAML would keep the last one silently), ``1e-3`` is the
number it looks like (YAML 1.1 reads it as a string), and values are validated as JSON would be: a YAML
boolean (yes/no/on/off) is not a number, a quoted "3" is not an integer, 2.5 is not an integer, a number is
not a boolean; lists still fill tuples and strings still name paths.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

__all__ = [
    "ConfigError",
    "error_lines",
    "error_location",
    "error_message",
    "list_as_key",
    "load_yaml_model",
    "node_at",
    "parse_yaml",
    "read_yaml",
    "validate_mapping",
    "validate_tree",
    "yaml_value",
]

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file (or a command-line override) is invalid; the message names the file, the line
    and the key of every problem."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one: a typo trap)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for k, _ in node.value:
        key = loader.construct_object(k, deep=deep)
        if key in seen:
            raise ConfigError(
                f"{loader.name}:{k.start_mark.line + 1}: key {key!r} repeated (first on line {seen[key]})"
            )
        seen[key] = k.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 (PyYAML) reads 1e-3 as a string; configurations are read strictly, so read it as the number it is.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML text; returns the data and its composed node tree (for line numbers).

    Raises:
        ConfigError: ``<source>:<line>: not valid YAML: ...`` or ``key 'x' repeated``.
    """
    try:
        loader = _UniqueKeyLoader(text)
        loader.name = source
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{source}{where}: not valid YAML: {problem}") from None
    return data, root


def read_yaml(path: str | os.PathLike, what: str = "configuration file") -> tuple[Any, yaml.Node | None]:
    """Read and parse a YAML file (see ``parse_yaml``); ``what`` names the file in "not found" errors."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    return parse_yaml(text, str(path))


def list_as_key(data: Any, root: yaml.Node | None, key: str) -> tuple[Any, yaml.Node | None]:
    """A file whose top level may be a bare list, read as the value of ``key`` (its nodes, so its line
    numbers, kept); anything else is returned as it is."""
    if not isinstance(data, list) or root is None:
        return data, root
    name = yaml.ScalarNode("tag:yaml.org,2002:str", key, root.start_mark, root.end_mark)
    return {key: data}, yaml.MappingNode("tag:yaml.org,2002:map", [(name, root)])


def yaml_value(text: str, source: str) -> Any:
    """One YAML value read as a file's value would be (``key=value`` overrides: ``1e-3``, ``[0, 1]``)."""
    data, _ = parse_yaml(text, source)
    return data


def node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[yaml.Node | None, bool]:
    """Walk the composed YAML tree along a pydantic error location. Returns the deepest node reached
    and whether the walk reached the full location (False: the key is missing; the node is its parent)."""
    node = root
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, yaml.MappingNode):
            found = None
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    found = k if last else v  # the key's line is where a person reads "key: value"
                    break
            if found is None:
                if isinstance(part, str) and part.startswith(("function-", "tagged-union")):
                    continue  # pydantic's internal union/validator tags are not YAML keys
                return node, False
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node, False
            node = node.value[part]
        else:
            # Unions report the branch type (e.g. "str", "int"): not a YAML level, skip it.
            continue
    return node, True


def error_location(e: dict) -> tuple[Any, ...]:
    """A pydantic error's location without union branch tags (``str``, ``int``...): the YAML key path."""
    return tuple(x for x in e["loc"] if not (isinstance(x, str) and x in {"str", "int", "float", "bool"}))


def _fields_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str] | None:
    """The keys the schema allows at ``loc`` (walking nested models, optional sections, lists and maps)."""
    tp: Any = model
    for part in loc:
        tp = _section_type(tp, part)
        if tp is None:
            return None
    return sorted(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _section_type(tp: Any, part: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(str(part))
        return _unwrap(field.annotation) if field is not None else None
    origin = typing.get_origin(tp)
    if origin in (list, tuple) and isinstance(part, int):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return _unwrap(args[min(part, len(args) - 1)]) if args else None
    if origin is dict:
        return _unwrap(typing.get_args(tp)[1])
    return None


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X`` (the one model or container type of an optional section)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return tp


def error_message(e: dict, schema_doc: str | None = None, model: type[BaseModel] | None = None) -> str:
    """The words of one pydantic error: unknown and missing keys said plainly (with the keys allowed there),
    the offending value shown."""
    msg = e["msg"]
    loc = error_location(e)
    if e["type"] == "extra_forbidden":
        hints = []
        valid = _fields_at(model, loc[:-1])
        if valid is not None:
            hints.append("valid keys here: " + ", ".join(valid))
        if schema_doc:
            hints.append(f"see {schema_doc} for the schema")
        msg = "unknown key (check the spelling" + "".join(f"; {h}" for h in hints) + ")"
    elif e["type"] == "missing":
        msg = (
            "item missing (the list is too short)"
            if loc and isinstance(loc[-1], int)
            else "required key is missing"
        )
    elif e["type"] in ("model_type", "dict_type", "model_attributes_type"):
        msg = "expected a mapping of keys"  # pydantic says "an object" / "a valid dictionary": JSON's words
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = e.get("input")
    if e["type"] not in ("missing", "extra_forbidden") and isinstance(got, (str, int, float, bool)):
        msg += f" (got {got!r})"
    return msg


def error_lines(
    source: str,
    root: yaml.Node | None,
    err: ValidationError,
    schema_doc: str | None = None,
    model: type[BaseModel] | None = None,
    prefix: tuple[str, ...] = (),
) -> list[str]:
    """One ``<source>:<line>: <key>: <message>`` per problem of ``err`` (``<source>: <key>: ...`` without a
    YAML node tree, e.g. a command-line override or a mapping read from a checkpoint)."""
    lines = []
    for e in err.errors():
        loc = error_location(e)
        key = ".".join(str(x) for x in (*prefix, *loc)) or "(top level)"
        where = source
        if root is not None:
            node, _ = node_at(root, loc)
            where += f":{node.start_mark.line + 1 if node is not None else 1}"
        lines.append(f"{where}: {key}: {error_message(e, schema_doc, model)}")
    return list(dict.fromkeys(lines))  # unions can report one problem twice


def validate_mapping(
    model: type[M],
    data: Any,
    source: str,
    *,
    prefix: tuple[str, ...] = (),
    context: dict | None = None,
    strict: bool | None = None,
) -> M:
    """Validate a mapping that has no YAML file behind it (e.g. a config stored in a checkpoint), with the
    same error format less the line: ``<source>: <prefix>.<key>: <message>``."""
    try:
        return model.model_validate(data, strict=strict, context=context)
    except ValidationError as e:
        raise ConfigError("\n".join(error_lines(source, None, e, model=model, prefix=prefix))) from None


def validate_tree(
    model: type[M],
    data: Any,
    root: yaml.Node | None,
    source: str,
    *,
    context: dict | None = None,
    schema_doc: str | None = None,
) -> M:
    """Validate parsed YAML ``data`` into ``model``, strictly (as JSON; see the module docstring).

    Raises:
        ConfigError: every problem on its own line, ``<source>:<line>: <key>: <message>``.
    """
    if not isinstance(data, dict):
        got = "nothing" if data is None else type(data).__name__
        raise ConfigError(f"{source}:1: (top level): expected a mapping of keys, got {got}")
    try:
        return model.model_validate_json(json.dumps(data, default=str), strict=True, context=context)
    except ValidationError as e:
        raise ConfigError("\n".join(error_lines(source, root, e, schema_doc, model))) from None


def load_yaml_model(
    model: type[M],
    path: str | os.PathLike,
    *,
    what: str = "configuration file",
    context: dict | None = None,
    schema_doc: str | None = None,
) -> M:
    """Read the YAML file ``path`` and validate it into ``model`` (``read_yaml`` + ``validate_tree``)."""
    data, root = read_yaml(path, what)
    return validate_tree(model, data, root, str(path), context=context, schema_doc=schema_doc)
