"""Payload validation against an action's input model: a dataclass or a pydantic model.

Errors have the shape pydantic uses, ``{"loc": [...], "msg": str, "type": str}``, so the host
and UIs see the same thing whichever kind of model a plugin uses.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any, Callable, Dict, List, Optional

__all__ = ["ValidationFailed", "make_validator"]

try:  # Python 3.10+: `int | None`
    from types import UnionType as _UnionType  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.9
    _UnionType = None  # type: ignore[assignment,misc]

_MISSING = object()


class ValidationFailed(Exception):
    """The payload does not fit the input model; ``errors`` lists why."""

    def __init__(self, errors: List[Dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__(summarize(errors))


def summarize(errors: List[Dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "payload"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "; ".join(parts)


def make_validator(model: Any) -> Callable[[Any], Any]:
    """Returns a function turning a payload into a model instance or raising `ValidationFailed`."""
    if isinstance(model, type) and hasattr(model, "model_validate") and hasattr(model, "model_fields"):
        return _pydantic_v2(model)
    if isinstance(model, type) and hasattr(model, "parse_obj") and hasattr(model, "__fields__"):
        return _pydantic_v1(model)
    if isinstance(model, type) and dataclasses.is_dataclass(model):
        hints = _hints(model)  # resolve once, at registration, so mistakes show early

        def validate(payload: Any) -> Any:
            errors: List[Dict[str, Any]] = []
            value = _convert_dataclass(model, payload, [], errors, hints)
            if errors:
                raise ValidationFailed(errors)
            return value

        return validate
    raise TypeError(
        f"Unsupported input model `{model!r}`; hint: use a dataclass or a pydantic model class"
    )


def _pydantic_v2(model: Any) -> Callable[[Any], Any]:
    import pydantic

    def validate(payload: Any) -> Any:
        try:
            return model.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise ValidationFailed(
                [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                 for e in exc.errors()]
            ) from None

    return validate


def _pydantic_v1(model: Any) -> Callable[[Any], Any]:
    import pydantic

    def validate(payload: Any) -> Any:
        try:
            return model.parse_obj(payload)
        except pydantic.ValidationError as exc:
            raise ValidationFailed(
                [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                 for e in exc.errors()]
            ) from None

    return validate


_HINTS: Dict[type, Dict[str, Any]] = {}


def _hints(cls: type) -> Dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # e.g. `int | None` under `from __future__ import annotations` on 3.9
            hints = {}
        for f in dataclasses.fields(cls):
            if f.name not in hints:
                hints[f.name] = f.type if not isinstance(f.type, str) else Any
        _HINTS[cls] = hints
    return hints


def _err(errors: List[Dict[str, Any]], loc: List[Any], msg: str, type_: str) -> object:
    errors.append({"loc": list(loc), "msg": msg, "type": type_})
    return _MISSING


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert_dataclass(cls: type, value: Any, loc: List[Any], errors: List[Dict[str, Any]],
                       hints: Optional[Dict[str, Any]] = None) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        return _err(errors, loc, f"Input should be an object, got {_json_type(value)}", "dict_type")
    hints = hints if hints is not None else _hints(cls)
    kwargs = {}
    before = len(errors)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in value:
            v = _convert(hints.get(f.name, Any), value[f.name], loc + [f.name], errors)
            if v is not _MISSING:
                kwargs[f.name] = v
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            _err(errors, loc + [f.name], "Field required", "missing")
    if len(errors) != before:
        return _MISSING
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # raised by __post_init__ checks
        return _err(errors, loc, str(exc), "value_error")


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _convert(tp: Any, value: Any, loc: List[Any], errors: List[Dict[str, Any]]) -> Any:
    if tp is Any or tp is object:
        return value
    if tp is None or tp is type(None):
        return None if value is None else _err(errors, loc, "Input should be null", "none_required")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (_UnionType is not None and isinstance(tp, _UnionType)):
        if value is None and type(None) in args:
            return None
        for arm in args:
            if arm is type(None):
                continue
            trial: List[Dict[str, Any]] = []
            v = _convert(arm, value, loc, trial)
            if not trial:
                return v
        names = " | ".join(_type_name(a) for a in args)
        return _err(errors, loc, f"Input should be {names}, got {_json_type(value)}", "union_type")
    if origin is typing.Literal:
        if value in args:
            return value
        return _err(errors, loc, "Input should be one of " + ", ".join(repr(a) for a in args),
                    "literal_error")
    if origin is not None and origin is getattr(typing, "Annotated", None):
        return _convert(args[0], value, loc, errors)
    if tp is bool:
        if isinstance(value, bool):
            return value
        return _err(errors, loc, f"Input should be a boolean, got {_json_type(value)}", "bool_type")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return _err(errors, loc, f"Input should be an integer, got {_json_type(value)}", "int_type")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return _err(errors, loc, f"Input should be a number, got {_json_type(value)}", "float_type")
    if tp is str:
        if isinstance(value, str):
            return value
        return _err(errors, loc, f"Input should be a string, got {_json_type(value)}", "string_type")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            return _err(errors, loc, "Input should be one of "
                        + ", ".join(repr(m.value) for m in tp), "enum")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, loc, errors)
    seq = origin if origin is not None else tp
    if seq in (list, tuple, set, frozenset) or seq in (typing.List, typing.Sequence) \
            or (isinstance(seq, type) and seq.__module__ == "collections.abc"
                and seq.__name__ in ("Sequence", "MutableSequence", "Iterable", "Collection")):
        if not isinstance(value, list):
            return _err(errors, loc, f"Input should be an array, got {_json_type(value)}", "list_type")
        if seq is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return _err(errors, loc, f"Input should have {len(args)} items", "tuple_type")
            items = [_convert(a, v, loc + [i], errors) for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(item_tp, v, loc + [i], errors) for i, v in enumerate(value)]
        if any(i is _MISSING for i in items):
            return _MISSING
        return items if seq not in (tuple, set, frozenset) else seq(items)
    if seq is dict or (isinstance(seq, type) and seq.__module__ == "collections.abc"
                       and seq.__name__ in ("Mapping", "MutableMapping")):
        if not isinstance(value, dict):
            return _err(errors, loc, f"Input should be an object, got {_json_type(value)}", "dict_type")
        val_tp = args[1] if len(args) == 2 else Any
        out = {k: _convert(val_tp, v, loc + [k], errors) for k, v in value.items()}
        if any(v is _MISSING for v in out.values()):
            return _MISSING
        return out
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return _err(errors, loc, f"Input should be {_type_name(tp)}, got {_json_type(value)}",
                    "is_instance_of")
    return value  # an annotation we do not understand (a TypeVar, a string): accept as is
