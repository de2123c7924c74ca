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
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

FieldType = Literal["int", "float", "str", "bool"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One provider field: its JSON type and limits (all inclusive).

    ``int``/``float`` take ``minimum``/``maximum``; ``str`` takes
    ``max_length`` and ``enum`` (the allowed values); ``bool`` takes none.
    ``description`` is shown in the OpenAPI document."""

    type: FieldType
    minimum: int | float | None = None
    maximum: int | float | None = None
    max_length: int | None = None
    enum: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        numeric = self.type in ("int", "float")
        if not numeric and (self.minimum is not None or self.maximum is not None):
            raise ValueError(f"minimum/maximum apply to int and float fields, not {self.type}")
        if self.type != "str" and (self.max_length is not None or self.enum):
            raise ValueError(f"max_length/enum apply to str fields, not {self.type}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is above maximum {self.maximum}")

    def annotation(self) -> Any:
        """The pydantic type that checks a value of this field."""
        if self.type == "int":
            return Annotated[int, Field(ge=self.minimum, le=self.maximum)]
        if self.type == "float":
            return Annotated[float, Field(ge=self.minimum, le=self.maximum)]
        if self.type == "bool":
            return bool
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
def _model(fields: tuple[tuple[str, FieldSpec], ...]) -> type[BaseModel]:
    definitions: dict[str, Any] = {name: (spec.annotation() | None, None) for name, spec in fields}
    return create_model("ExtraFields", __config__=ConfigDict(extra="forbid", frozen=True), **definitions)


def extra_fields_model(fields: Mapping[str, FieldSpec]) -> type[BaseModel]:
    """A pydantic model with one optional attribute per declared field (cached:
    models sharing declarations share the class)."""
    return _model(tuple(sorted(fields.items())))
