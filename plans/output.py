"""Typed outputs: what an agent answers, as a JSON Schema on the wire and a msgspec type here.

An agent may declare its output as a Python type (a msgspec ``Struct``, a dataclass, a
``TypedDict``, or anything msgspec can decode: ``list[Ticket]``, ``Literal[...]``...), as its
import path ``module:Type`` in a plan file, or as a JSON Schema written in the plan.
:func:`output_type_of` turns any of them into an :class:`OutputType`:

* ``text_format()``, the ``text.format`` the agent sends on every turn: ``json_schema``,
  ``strict`` where the schema allows it (every object closed and fully required, no
  keyword that structured outputs reject), the strict form being derived the way the
  Agents SDK derives it (``additionalProperties: false``, every property required);
* ``check(text)``, which decodes the model's final text and validates it with msgspec,
  returning the value (an instance of the type; plain JSON data for a plan's schema) or
  raising :class:`OutputMismatch` with the place and reason, e.g. ``$.priority: expected
  one of 'low', 'high', got 'urgent'``.

The service requires an object at the root of a schema: any other output (a list, a
string...) is sent wrapped as ``{"result": ...}`` and unwrapped by ``check``.

A plan's JSON Schema is compiled to msgspec types, so the same decoder checks it. The
keywords understood are ``type`` (a name or a list of names), ``properties``, ``required``,
``additionalProperties``, ``items``, ``minItems``, ``maxItems``, ``enum`` and ``const``
(strings, integers, null), ``anyOf`` (``oneOf`` is checked as ``anyOf``), ``$ref`` into
``$defs``/``definitions`` (not recursive), ``minimum``, ``maximum``, ``exclusiveMinimum``,
``exclusiveMaximum``, ``multipleOf``, ``minLength``, ``maxLength``, ``pattern``, and
``format`` (``date-time``, ``date``, ``time``, ``uuid`` and ``duration`` are checked, other
formats are annotations); ``title``, ``description``, ``default``, ``examples`` and
``$schema`` are annotations. Any other keyword is an :class:`OutputError`: a schema is never
checked more loosely than it reads. For more, give a type path.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import re
import typing
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, Union

import attrs
import msgspec

from orchestrator.core.rules import IMPORT_PATH, ImportPathError, resolve_import
from orchestrator.errors import OutputError, OutputMismatch

__all__ = [
    "OutputError",
    "OutputMismatch",
    "OutputType",
    "import_type",
    "output_type_of",
]

RESULT_KEY: Final = "result"
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ANNOTATIONS: Final = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
_UNDERSTOOD: Final = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "$ref",
    "$defs",
    "definitions",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
}
# Keywords that structured outputs' strict mode refuses: a schema using one is sent
# with strict = false (the model is asked, not forced; the check here is the same).
_NOT_STRICT: Final = frozenset({"minLength", "maxLength", "oneOf"})
_FORMATS: Final[Mapping[str, Any]] = {
    "date-time": datetime.datetime,
    "date": datetime.date,
    "time": datetime.time,
    "uuid": uuid.UUID,
    "duration": datetime.timedelta,
}
_SCALARS: Final[Mapping[str, Any]] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "null": type(None),
}


@attrs.frozen(eq=False)
class OutputType:
    """A declared output, ready for the wire and for checking (see the module doc).

    Attributes:
        name: the ``text.format`` name (the type's or the schema's title, else ``output``).
        schema: the JSON Schema sent (an object at the root; strict form when ``strict``).
        strict: whether ``text.format`` asks for strict structured outputs.
        wrapped: the output is sent as ``{"result": ...}``.
        python_type: the caller's type, or None for a plan's JSON Schema (then ``check``
            returns plain JSON data).
        source: the declaration as a plan holds it (import path or schema), for
            fingerprints and messages.
    """

    name: str
    schema: dict[str, Any]
    strict: bool
    wrapped: bool
    python_type: Any
    source: str | dict[str, Any]
    _decoder: msgspec.json.Decoder[Any] = attrs.field(repr=False)
    _validated: Any = attrs.field(repr=False)  # the type plain data is converted to

    def text_format(self) -> dict[str, Any]:
        """``text.format`` for a ``response.create``."""
        return {
            "type": "json_schema",
            "name": self.name,
            "schema": self.schema,
            "strict": self.strict,
        }

    def check(self, text: str) -> tuple[Any, str]:
        """Decode and validate the model's final text.

        A single Markdown code fence around the JSON is tolerated (and removed).

        Returns:
            The value (an instance of ``python_type``, or plain JSON data for a schema) and
            the JSON text it came from.

        Raises:
            OutputMismatch: not JSON, or not of the declared output.
        """
        body = _unfence(text)
        if not body:
            raise OutputMismatch("the answer is empty; expected JSON")
        try:
            if self.python_type is not None:
                value = self._decoder.decode(body)
                return (getattr(value, RESULT_KEY) if self.wrapped else value), body
            data = self._decoder.decode(body)
            msgspec.convert(data, self._validated)
        except msgspec.ValidationError as exc:
            raise OutputMismatch(_describe(str(exc))) from None
        except msgspec.DecodeError as exc:
            detail = str(exc).removeprefix("JSON is malformed: ")
            raise OutputMismatch(f"not valid JSON: {detail[:1].lower()}{detail[1:]}") from None
        return (data[RESULT_KEY] if self.wrapped else data), body

    def encode(self, value: Any) -> str:
        """``value`` as the JSON text an agent would answer (unwrapped)."""
        return msgspec.json.encode(value).decode()


def output_type_of(declared: Any, *, import_paths: bool = True) -> OutputType:
    """An :class:`OutputType` from a type, a ``module:Type`` path or a JSON Schema.

    Args:
        declared: a Python type (anything msgspec can decode), an import path string, or a
            JSON Schema mapping.
        import_paths: import a path's module (False: only check its syntax, and describe
            the output as an open JSON object; for plans checked without importing).

    Raises:
        OutputError: the declaration cannot be used.
    """
    if isinstance(declared, str):
        if not IMPORT_PATH.fullmatch(declared):
            raise OutputError(
                f"{declared!r} is not an import path or a JSON Schema",
                suggestion="expected 'package.module:Type', or a JSON Schema table",
            )
        if not import_paths:
            return _of_schema({"type": "object"}, source=declared)
        return _of_type(import_type(declared), source=declared)
    if isinstance(declared, Mapping):
        return _of_schema(dict(declared), source=dict(declared))
    return _of_type(declared, source=_path_of(declared))


def import_type(path: str) -> Any:
    """The object ``module:Name`` (dotted names inside the module allowed).

    Raises:
        OutputError: the module or the name is missing, or importing it failed.
    """
    try:
        return resolve_import(path, candidate=_looks_like_type, what="type")
    except ImportPathError as exc:
        raise OutputError(exc.message, suggestion=exc.suggestion) from None


# -- from a Python type --------------------------------------------------------------------------


def _of_type(declared: Any, *, source: str) -> OutputType:
    try:
        schema = msgspec.json.schema(declared)
    except (TypeError, ValueError) as exc:
        raise OutputError(f"{_type_name(declared)} cannot be an output type: {exc}") from None
    root = _inline_root(schema)
    wrapped = not _is_object(root)
    if wrapped:
        wrapper = msgspec.defstruct("Output", [(RESULT_KEY, declared)], forbid_unknown_fields=True)
        decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(wrapper)
        root = _wrap(root)
    else:
        decoder = msgspec.json.Decoder(declared)
    strict = _strict(root)
    return OutputType(
        name=_name(getattr(declared, "__name__", None)),
        schema=strict if strict is not None else root,
        strict=strict is not None,
        wrapped=wrapped,
        python_type=declared,
        source=source,
        decoder=decoder,
        validated=None,
    )


def _path_of(declared: Any) -> str:
    module, name = getattr(declared, "__module__", None), getattr(declared, "__qualname__", None)
    if isinstance(module, str) and isinstance(name, str):
        return f"{module}:{name}"
    return repr(declared)


def _type_name(declared: Any) -> str:
    name = getattr(declared, "__qualname__", None)
    return name if isinstance(name, str) else repr(declared)


def _looks_like_type(value: Any) -> bool:
    return isinstance(value, type) or typing.get_origin(value) is not None


# -- from a JSON Schema --------------------------------------------------------------------------


def _of_schema(schema: dict[str, Any], *, source: str | dict[str, Any]) -> OutputType:
    if not schema:
        raise OutputError("the schema is empty", suggestion="give at least a 'type'")
    compiled = _Compiler(schema).compile(schema, "")
    try:
        msgspec.json.Decoder(compiled)
    except TypeError as exc:
        raise OutputError(f"msgspec cannot check this schema: {exc}") from None
    root = copy.deepcopy(schema)
    wrapped = not _is_object(root)
    if wrapped:
        root = _wrap(root)
        compiled = msgspec.defstruct("Output", [(RESULT_KEY, compiled)], forbid_unknown_fields=True)
    strict = _strict(root)
    title = schema.get("title")
    return OutputType(
        name=_name(title if isinstance(title, str) else None),
        schema=strict if strict is not None else root,
        strict=strict is not None,
        wrapped=wrapped,
        python_type=None,
        source=source,
        decoder=msgspec.json.Decoder(),
        validated=compiled,
    )


@attrs.define
class _Compiler:
    """JSON Schema -> msgspec types (see the module doc for what is understood)."""

    root: Mapping[str, Any]
    _done: dict[str, Any] = attrs.field(factory=dict)
    _busy: set[str] = attrs.field(factory=set)
    _structs: int = 0

    def compile(self, schema: Any, where: str) -> Any:
        if schema is True or schema == {}:
            return Any
        if not isinstance(schema, Mapping):
            raise OutputError(f"expected a schema (an object), got {_kind(schema)}", where)
        unknown = sorted(set(schema) - _UNDERSTOOD)
        if unknown:
            close = _closest(unknown[0], _UNDERSTOOD, cutoff=0.8)
            raise OutputError(
                f"JSON Schema keyword {unknown[0]!r} is not supported in a plan's output_type",
                f"{where}.{unknown[0]}" if where else f".{unknown[0]}",
                f"did you mean {close!r}?"
                if close
                else "use a type path 'module:Type' for more than this subset",
            )
        if "$ref" in schema:
            return self.reference(schema["$ref"], where)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                variants = schema[key]
                if not isinstance(variants, list) or not variants:
                    raise OutputError(f"{key} must be a non-empty array", f"{where}.{key}")
                members = [self.compile(v, f"{where}.{key}[{i}]") for i, v in enumerate(variants)]
                return Union[tuple(members)]  # noqa: UP007 (a runtime union of types)
        if "const" in schema:
            return self.literal([schema["const"]], f"{where}.const")
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise OutputError("enum must be a non-empty array", f"{where}.enum")
            return self.literal(values, f"{where}.enum")
        kind = schema.get("type")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind is None:
            return Any
        if isinstance(kind, list):
            if not kind or not all(isinstance(k, str) for k in kind):
                raise OutputError("type must be a name or a list of names", f"{where}.type")
            return Union[tuple(self.typed(schema, k, where) for k in kind)]  # noqa: UP007
        return self.typed(schema, kind, where)

    def typed(self, schema: Mapping[str, Any], kind: Any, where: str) -> Any:
        if kind == "object":
            return self.object(schema, where)
        if kind == "array":
            items = self.compile(schema.get("items", True), f"{where}.items")
            return _annotated(list[items], schema, where, ("minItems", "maxItems"))  # type: ignore[valid-type]
        if kind == "string":
            fmt = schema.get("format")
            base = _FORMATS.get(fmt, str) if isinstance(fmt, str) else str
            if base is not str:
                return base
            return _annotated(str, schema, where, ("minLength", "maxLength", "pattern"))
        if kind in ("integer", "number"):
            bounds = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
            return _annotated(_SCALARS[kind], schema, where, bounds)
        if kind in _SCALARS:
            return _SCALARS[kind]
        close = _closest(str(kind), [*_SCALARS, "object", "array"])
        raise OutputError(
            f"unknown type {kind!r}",
            f"{where}.type",
            f"did you mean {close!r}?" if close else None,
        )

    def object(self, schema: Mapping[str, Any], where: str) -> Any:
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        if not isinstance(properties, Mapping):
            raise OutputError("properties must be an object", f"{where}.properties")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise OutputError("required must be an array of names", f"{where}.required")
        for name in required:
            if name not in properties:
                raise OutputError(
                    f"required names {name!r}, which is not among the properties",
                    f"{where}.required",
                    _suggest(name, properties),
                )
        if not properties:
            if extra is False:
                return msgspec.defstruct(self.struct_name(), [], forbid_unknown_fields=True)
            values = Any if extra is True else self.compile(extra, f"{where}.additionalProperties")
            return dict[str, values]  # type: ignore[valid-type]
        if extra not in (True, False):
            raise OutputError(
                "additionalProperties as a schema next to properties is not supported",
                f"{where}.additionalProperties",
                "use true or false",
            )
        fields: list[Any] = []
        rename: dict[str, str] = {}
        for index, (name, sub) in enumerate(properties.items()):
            field = f"f{index}"
            rename[field] = name
            compiled = self.compile(sub, f"{where}.properties.{name}")
            if name in required:
                fields.append((field, compiled))
            else:
                fields.append((field, Union[compiled, msgspec.UnsetType], msgspec.UNSET))  # noqa: UP007
        return msgspec.defstruct(
            self.struct_name(),
            fields,
            rename=rename,
            forbid_unknown_fields=extra is False,
            kw_only=True,
        )

    def struct_name(self) -> str:
        self._structs += 1
        return f"Object{self._structs}"

    def reference(self, ref: Any, where: str) -> Any:
        match = (
            re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref) if isinstance(ref, str) else None
        )
        if match is None:
            raise OutputError(
                f"$ref {ref!r} is not supported",
                f"{where}.$ref",
                "refer to '#/$defs/NAME' or '#/definitions/NAME'",
            )
        if ref in self._done:
            return self._done[ref]
        if ref in self._busy:
            raise OutputError(
                f"$ref {ref!r} is recursive", f"{where}.$ref", "use a type path for recursive types"
            )
        section = self.root.get(match.group(1))
        if not isinstance(section, Mapping) or match.group(2) not in section:
            names = list(section) if isinstance(section, Mapping) else []
            raise OutputError(
                f"$ref {ref!r} names no definition",
                f"{where}.$ref",
                _suggest(match.group(2), names),
            )
        self._busy.add(ref)
        compiled = self.compile(section[match.group(2)], f".{match.group(1)}.{match.group(2)}")
        self._busy.discard(ref)
        self._done[ref] = compiled
        return compiled

    def literal(self, values: list[Any], where: str) -> Any:
        for value in values:
            if isinstance(value, bool) or not isinstance(value, str | int | None):
                raise OutputError(
                    f"{value!r}: only strings, integers and null can be listed",
                    where,
                    "use a type path for other constants",
                )
        return Literal[tuple(values)]


def _annotated(base: Any, schema: Mapping[str, Any], where: str, keys: tuple[str, ...]) -> Any:
    names = {
        "minimum": "ge",
        "maximum": "le",
        "exclusiveMinimum": "gt",
        "exclusiveMaximum": "lt",
        "multipleOf": "multiple_of",
        "minLength": "min_length",
        "maxLength": "max_length",
        "pattern": "pattern",
        "minItems": "min_length",
        "maxItems": "max_length",
    }
    constraints: dict[str, Any] = {}
    for key in keys:
        if key in schema:
            value = schema[key]
            wanted = str if key == "pattern" else int | float
            if isinstance(value, bool) or not isinstance(value, wanted):
                raise OutputError(
                    f"{key} must be a {'string' if key == 'pattern' else 'number'}",
                    f"{where}.{key}",
                )
            constraints[names[key]] = value
    if not constraints:
        return base
    try:
        return Annotated[base, msgspec.Meta(**constraints)]
    except (TypeError, ValueError, re.error) as exc:
        raise OutputError(f"invalid constraint: {exc}", where) from None


# -- the wire form -------------------------------------------------------------------------------


def _inline_root(schema: dict[str, Any]) -> dict[str, Any]:
    """msgspec's ``{"$ref": "#/$defs/T", "$defs": {...}}`` with T's schema at the root
    (the service wants an object there, not a reference)."""
    ref = schema.get("$ref")
    defs = schema.get("$defs", {})
    if isinstance(ref, str) and ref.startswith("#/$defs/") and set(schema) <= {"$ref", "$defs"}:
        root = dict(defs[ref.removeprefix("#/$defs/")])
        if _mentions(defs, ref):
            root["$defs"] = defs  # recursive: the root's own definition stays referable
        else:
            others = {k: v for k, v in defs.items() if f"#/$defs/{k}" != ref}
            if others:
                root["$defs"] = others
        return root
    return schema


def _mentions(value: Any, ref: str) -> bool:
    if isinstance(value, dict):
        return value.get("$ref") == ref or any(_mentions(v, ref) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, ref) for v in value)
    return False


def _is_object(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "object" and isinstance(schema.get("properties"), Mapping)


def _wrap(schema: dict[str, Any]) -> dict[str, Any]:
    inner = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
    wrapper: dict[str, Any] = {
        "type": "object",
        "properties": {RESULT_KEY: inner},
        "required": [RESULT_KEY],
        "additionalProperties": False,
    }
    for key in ("$defs", "definitions"):
        if key in schema:
            wrapper[key] = schema[key]
    return wrapper


def _strict(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The strict form of ``schema`` (objects closed, every property required, no
    ``default``), or None when strict mode cannot express it."""
    if not _is_object(schema):
        return None
    result = _strict_node(copy.deepcopy(schema))
    return result if isinstance(result, dict) else None


def _strict_node(node: Any) -> Any:
    if isinstance(node, list):
        items = [_strict_node(item) for item in node]
        return None if any(item is None for item in items) else items
    if not isinstance(node, dict):
        return node
    if set(node) & _NOT_STRICT or set(node) - _UNDERSTOOD:
        return None
    node.pop("default", None)
    if node.get("type") == "object" or "properties" in node:
        closed = node.get("additionalProperties", False) is False
        if not isinstance(node.get("properties"), dict) or not closed:
            return None
        node["additionalProperties"] = False
        node["required"] = list(node["properties"])
    for key in ("items", "anyOf"):
        if key in node:
            node[key] = _strict_node(node[key])
            if node[key] is None:
                return None
    for key in ("properties", "$defs", "definitions"):
        if isinstance(node.get(key), dict):
            converted = {name: _strict_node(sub) for name, sub in node[key].items()}
            if any(sub is None for sub in converted.values()):
                return None
            node[key] = converted
    return node


# -- helpers -------------------------------------------------------------------------------------

_FENCE: Final = re.compile(r"\A```[A-Za-z0-9_-]*\s*\n(.*)\n\s*```\Z", re.DOTALL)
_MSGSPEC_AT: Final = re.compile(r"^(.*?)(?: - at `(\$.*)`)?$", re.DOTALL)


def _unfence(text: str) -> str:
    stripped = text.strip()
    match = _FENCE.match(stripped)
    return match.group(1).strip() if match else stripped


def _describe(error: str) -> str:
    """msgspec's ``Expected `int`, got `str` - at `$.x``` as ``$.x: expected int, got str``."""
    match = _MSGSPEC_AT.match(error)
    assert match is not None  # the pattern matches every string
    message = match.group(1).replace("`", "")
    message = message[:1].lower() + message[1:]
    return f"{match.group(2)}: {message}" if match.group(2) else message


def _name(candidate: str | None) -> str:
    if candidate and _NAME.fullmatch(candidate):
        return candidate
    return "output"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _closest(word: str, candidates: Any, cutoff: float = 0.6) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def _suggest(word: str, candidates: Any) -> str | None:
    close = _closest(word, candidates)
    return f"did you mean {close!r}?" if close else None
