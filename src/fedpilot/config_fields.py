"""The fields of a pydantic config model, read by path: for `fedpilot config`, overrides and error hints.

A path is a list of keys from the root model, e.g. ["clients", "groups", "0", "memory"]; a number
steps into a list of sections.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class FieldDoc:
    """One documented field: dotted name, type as written for users, default and description."""

    name: str
    type: str
    default: str
    description: str


def section_of(annotation: Any) -> type[BaseModel] | None:
    """The section model an annotation holds (itself, or the item of a list of sections), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is list:
        return section_of(typing.get_args(annotation)[0])
    return None


def annotation_at(model: type[BaseModel], path: list[str]) -> Any | None:
    """The annotation of the field at `path` (an item's annotation after a list index), or None if unknown."""
    annotation: Any = model
    for part in path:
        if part.isdigit() and typing.get_origin(annotation) is list:
            annotation = typing.get_args(annotation)[0]
            continue
        section = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if section is None or part not in section.model_fields:
            return None
        annotation = section.model_fields[part].annotation
    return annotation


def is_string_list(annotation: Any) -> bool:
    """Whether an annotation is `list[str]`, possibly constrained (`Annotated`) or optional (`| None`)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return is_string_list(args[0])
    if origin in (typing.Union, types.UnionType):
        return any(is_string_list(a) for a in args if a is not type(None))
    return origin is list and args == (str,)


def closest_fields(model: type[BaseModel], path: list[str]) -> list[str]:
    """Up to three field names of the section holding `path[-1]` that are closest to it."""
    section = section_of(annotation_at(model, path[:-1]))
    if section is None:
        return []
    return difflib.get_close_matches(path[-1], list(section.model_fields), n=3, cutoff=0.5)


def type_name(annotation: Any) -> str:
    """An annotation as users read it: `int`, `float | None`, `iid|dirichlet`, `list[str]`, `list[ClientGroup]`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]"
    return getattr(annotation, "__name__", str(annotation))


def field_docs(model: type[BaseModel], prefix: str = "") -> list[FieldDoc]:
    """Every field of a model, sections expanded (list items as `name[].field`), in declaration order."""
    docs: list[FieldDoc] = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        section = section_of(info.annotation)
        if section is not None and typing.get_origin(info.annotation) is not list:
            docs += field_docs(section, f"{dotted}.")
            continue
        default = info.default if info.default is not PydanticUndefined else None
        shown = _shown_default(default)
        docs.append(FieldDoc(dotted, type_name(info.annotation), shown, info.description or ""))
        if section is not None:
            docs += field_docs(section, f"{dotted}[].")
    return docs


def _shown_default(default: Any) -> str:
    """A default value as YAML-like text."""
    if isinstance(default, list):
        return "[" + ", ".join(_shown_default(item) for item in default) + "]"
    if isinstance(default, BaseModel):
        return "{" + ", ".join(f"{k}: {v}" for k, v in default.model_dump().items()) + "}"
    return "null" if default is None else str(default)
