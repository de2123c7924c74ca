"""A typed request and its caller to their stored form, and back.

A job's request is built and validated once, when it is submitted; the
worker rebuilds the same :class:`~imagegate.contract.requests.ImageRequest`
from the stored form without fetching URLs or validating again: the fields
as sent (which were sent included), the extra fields, the input images'
bytes and what their headers said, and the model's rules looked up by its
route. The caller is stored as authentication found it, so a job settles on
the same key and team whatever happens to the key later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, cast

from imagegate.accounting.caller import Caller
from imagegate.accounting.service import Outcome
from imagegate.contract.catalog import ModelSpec
from imagegate.contract.requests import FIELDS_BY_ENDPOINT, Endpoint, ImageRequest, InputImage
from imagegate.contract.results import Deployment, ImageMeta, Usage
from imagegate.imaging.probe import ImageInfo

FORMAT = 1  # the stored form's version


def encode_request(request: ImageRequest) -> dict[str, Any]:
    """The request's fields as JSON (the input images go separately: :func:`encode_inputs`)."""
    return {
        "v": FORMAT,
        "endpoint": request.endpoint,
        "model": request.model,
        "params": request.params.model_dump(mode="json", exclude_unset=True),
        "extra": dict(request.extra),
    }


def encode_inputs(request: ImageRequest) -> list[tuple[str, dict[str, Any], bytes]]:
    """(field, header info, bytes) of each input image, then the mask."""
    inputs = [*request.images, *((request.mask,) if request.mask is not None else ())]
    return [(image.field, asdict(image.info), image.data) for image in inputs]


def decode_request(
    stored: dict[str, Any], inputs: Sequence[tuple[str, dict[str, Any], bytes]], spec_of: Callable[[str], ModelSpec]
) -> ImageRequest:
    """The request :func:`encode_request` and :func:`encode_inputs` stored.
    ``spec_of`` gives a model's rules (KeyError: no longer served)."""
    if stored.get("v") != FORMAT:
        raise ValueError(f"unknown stored request format {stored.get('v')!r}")
    endpoint = cast(Endpoint, stored["endpoint"])
    schema = FIELDS_BY_ENDPOINT[endpoint]
    sent: dict[str, Any] = stored["params"]
    params = schema.model_construct(_fields_set=set(sent), **sent)  # as validated at submission
    images: list[InputImage] = []
    mask = None
    for field, info, data in inputs:
        image = InputImage(data, ImageInfo(**info), field)
        if field == "mask":
            mask = image
        else:
            images.append(image)
    model = str(stored["model"])
    return ImageRequest(endpoint, model, spec_of(model), params, tuple(images), mask, dict(stored["extra"]))


def encode_caller(caller: Caller) -> dict[str, Any]:
    doc = {name: getattr(caller, name) for name in Caller.__dataclass_fields__}  # flat: no asdict deep copies
    doc["models"] = list(caller.models) if caller.models is not None else None
    return doc


def decode_caller(stored: dict[str, Any]) -> Caller:
    doc = dict(stored)
    models = doc.pop("models", None)
    known = {name: doc[name] for name in Caller.__dataclass_fields__ if name in doc}
    return Caller(**known, models=tuple(models) if models is not None else None)


def encode_outcome(outcome: Outcome, final: str, served: ImageRequest | None, deployment: Deployment | None) -> dict[str, Any]:
    """What a job's settlement charges, and the final state it leads to:
    stored with ``settling``, so a takeover settles exactly the same."""
    return {
        "final": final,
        "images": outcome.images,
        "usage": asdict(outcome.usage) if outcome.usage is not None else None,
        "meta": asdict(outcome.meta),
        "status": outcome.status,
        "error_code": outcome.error_code,
        "upstream_cost_nusd": outcome.upstream_cost_nusd,
        "model": served.model if served is not None else None,
        "provider": deployment.provider if deployment is not None else None,
        "upstream_model": deployment.model if deployment is not None else None,
    }


def decode_outcome(stored: dict[str, Any]) -> tuple[str, Outcome, str | None, Deployment | None]:
    """(final status, outcome, the model that served it, its deployment)."""
    usage = Usage(**stored["usage"]) if stored.get("usage") is not None else None
    outcome = Outcome(
        images=int(stored["images"]),
        usage=usage,
        meta=ImageMeta(**stored["meta"]),
        status=int(stored["status"]),
        error_code=stored.get("error_code"),
        upstream_cost_nusd=stored.get("upstream_cost_nusd"),
    )
    provider = stored.get("provider")
    deployment = Deployment(provider, str(stored.get("upstream_model") or "")) if provider else None
    return str(stored["final"]), outcome, stored.get("model"), deployment
