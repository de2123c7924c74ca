"""Provider-specific request fields, declared per model in its catalog entry.

OpenAI's spec fixes the fields every model may be sent; a provider may take
more (a seed, a negative prompt, Black Forest Labs' ``safety_tolerance``,
Stability's ``style_preset``). A model's catalog entry declares each one it
takes in ``ModelSpec.extra_fields`` with a :class:`FieldSpec`: its JSON type
and limits. Validation turns the declarations into a pydantic model
(:func:`extra_fields_model`), so a declared field is checked like a spec field,
with the same codes (``invalid_type``, ``integer_above_max_value``,
``invalid_value``, ``string_above_max_length``), and a field no entry declares
is ``unknown_parameter``. The validated values travel on
``ImageRequest.extra`` to the provider.

A field may be a JSON object (``properties``, each a :class:`FieldSpec`,
some ``required``; any other key is refused) or an array (``items``, between
``min_items`` and ``max_items`` of them), nested as deep as the upstream's
own schema (Recraft's ``controls``: an object holding arrays of colours).
An error names the exact place: ``controls.colors[0].rgb[2]``. A multipart
form carries such a field as JSON text.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

FieldType = Literal["int", "float", "str", "bool", "object", "array"]
NESTED: tuple[FieldType, ...] = ("object", "array")


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One provider field: its JSON type and limits (all inclusive).

    ``int``/``float`` take ``minimum``/``maximum``; ``str`` takes
    ``max_length`` and ``enum`` (the allowed values); ``bool`` takes none;
    ``object`` takes ``properties`` (name -> FieldSpec, given as a mapping)
    and ``required`` (names among them); ``array`` takes ``items`` (the
    FieldSpec of each) and ``min_items``/``max_items``.
    ``description`` is shown in the OpenAPI document."""

    type: FieldType
    minimum: int | float | None = None
    maximum: int | float | None = None
    max_length: int | None = None
    enum: tuple[str, ...] = ()
    description: str = ""
    properties: tuple[tuple[str, FieldSpec], ...] = field(default=())  # a mapping is taken and kept sorted
    required: tuple[str, ...] = ()
    items: FieldSpec | None = None
    min_items: int | None = None
    max_items: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.properties, Mapping):
            object.__setattr__(self, "properties", tuple(sorted(self.properties.items())))
        object.__setattr__(self, "required", tuple(sorted(self.required)))
        numeric = self.type in ("int", "float")
        if not numeric and (self.minimum is not None or self.maximum is not None):
            raise ValueError(f"minimum/maximum apply to int and float fields, not {self.type}")
        if self.type != "str" and (self.max_length is not None or self.enum):
            raise ValueError(f"max_length/enum apply to str fields, not {self.type}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is above maximum {self.maximum}")
        if self.type != "object" and (self.properties or self.required):
            raise ValueError(f"properties/required apply to object fields, not {self.type}")
        if self.type == "object" and not self.properties:
            raise ValueError("an object field needs its properties")
        if missing := set(self.required) - {name for name, _ in self.properties}:
            raise ValueError(f"required names no property: {', '.join(sorted(missing))}")
        if self.type != "array" and (self.items is not None or self.min_items is not None or self.max_items is not None):
            raise ValueError(f"items/min_items/max_items apply to array fields, not {self.type}")
        if self.type == "array" and self.items is None:
            raise ValueError("an array field needs its items")
        if self.min_items is not None and self.max_items is not None and self.min_items > self.max_items:
            raise ValueError(f"min_items {self.min_items} is above max_items {self.max_items}")

    def annotation(self) -> Any:
        """The pydantic type that checks a value of this field."""
        if self.type == "int":
            return Annotated[int, Field(ge=self.minimum, le=self.maximum)]
        if self.type == "float":
            return Annotated[float, Field(ge=self.minimum, le=self.maximum)]
        if self.type == "bool":
            return bool
        if self.type == "object":
            return _object_model(self.properties, self.required)
        if self.type == "array":
            assert self.items is not None
            return Annotated[list[self.items.annotation()], Field(min_length=self.min_items, max_length=self.max_items)]  # type: ignore[misc]
        if self.enum:
            return Annotated[str, AfterValidator(functools.partial(_one_of, self.enum))]
        return Annotated[str, Field(max_length=self.max_length)]


def _one_of(allowed: tuple[str, ...], value: str) -> str:
    if value not in allowed:
        # The error a Literal gives, so it reads (and is coded) like a spec enum's.
        expected = ", ".join(f"'{v}'" for v in allowed)
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
    return value


@functools.cache
def _object_model(properties: tuple[tuple[str, FieldSpec], ...], required: tuple[str, ...]) -> type[BaseModel]:
    """An object field's model: its properties (the required ones without a
    default), any other key refused."""
    definitions: dict[str, Any] = {
        name: (spec.annotation(), ...) if name in required else (spec.annotation() | None, None) for name, spec in properties
    }
    return create_model("ObjectField", __config__=ConfigDict(extra="forbid", frozen=True), **definitions)


@functools.cache
def _model(fields: tuple[tuple[str, FieldSpec], ...]) -> type[BaseModel]:
    definitions: dict[str, Any] = {name: (spec.annotation() | None, None) for name, spec in fields}
    return create_model("ExtraFields", __config__=ConfigDict(extra="forbid", frozen=True), **definitions)


def extra_fields_model(fields: Mapping[str, FieldSpec]) -> type[BaseModel]:
    """A pydantic model with one optional attribute per declared field (cached:
    models sharing declarations share the class)."""
    return _model(tuple(sorted(fields.items())))
