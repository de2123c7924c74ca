"""A job's stored request and caller come back exactly as they were built."""

from __future__ import annotations

import orjson
import pytest

from imagegate.accounting.caller import Caller
from imagegate.accounting.service import Outcome
from imagegate.contract.catalog import shipped
from imagegate.contract.requests import EditFields, GenerationFields, ImageRequest, InputImage
from imagegate.contract.results import Deployment, ImageMeta, Usage
from imagegate.errors import NotFoundError
from imagegate.gateway.jobs import codec
from imagegate.imaging.probe import ImageInfo

SPEC = shipped().lookup("gpt-image-1")


def spec_of(model: str):  # type: ignore[no-untyped-def]
    if model != "gpt-image-1":
        raise NotFoundError("gone", param="model")
    return SPEC


def _round_trip(request: ImageRequest) -> ImageRequest:
    stored = orjson.loads(orjson.dumps(codec.encode_request(request)))  # through JSON, as the database keeps it
    inputs = [(field, orjson.loads(orjson.dumps(info)), data) for field, info, data in codec.encode_inputs(request)]
    return codec.decode_request(stored, inputs, spec_of)


def test_an_edit_with_images_a_mask_and_extra_fields_comes_back_identical() -> None:
    png, jpeg, mask = b"\x89PNG-one" + bytes(range(256)), b"\xff\xd8\xff-two", b"\x89PNG-mask"
    params = EditFields.model_validate({"prompt": "merge", "n": 2, "quality": "high", "output_compression": None,
                                        "input_fidelity": "low", "background": "opaque"})  # fmt: skip
    request = ImageRequest(
        "edits", "gpt-image-1", SPEC, params,
        (InputImage(png, ImageInfo("png", 64, 32, "RGBA", True, len(png)), "image[0]"),
         InputImage(jpeg, ImageInfo("jpeg", 8, 8, "RGB", False, len(jpeg)), "image[1]")),
        InputImage(mask, ImageInfo("png", 64, 32, "RGBA", True, len(mask)), "mask"),
        {"seed": 7, "style": {"nested": [1, 2]}},
    )  # fmt: skip
    back = _round_trip(request)
    assert back == request  # every field, the images' bytes and headers, the extra fields, the spec
    assert back.params.model_fields_set == params.model_fields_set  # what was sent (an explicit null included)
    assert back.sent() == request.sent() and back.fingerprint("vk") == request.fingerprint("vk")
    assert [i.data for i in back.images] == [png, jpeg] and back.mask is not None and back.mask.data == mask


def test_a_generation_keeps_unsent_fields_unsent() -> None:
    request = ImageRequest("generations", "gpt-image-1", SPEC, GenerationFields.model_validate({"prompt": "p"}))
    back = _round_trip(request)
    assert back.params.model_fields_set == {"prompt"} and back.sent() == {"prompt": "p"} and back.images == ()


def test_a_model_no_longer_served_is_the_lookups_error() -> None:
    request = ImageRequest("generations", "gone-model", SPEC, GenerationFields.model_validate({"prompt": "p"}))
    with pytest.raises(NotFoundError):
        _round_trip(request)


def test_the_caller_and_the_outcome_round_trip() -> None:
    caller = Caller("key", key_id="k1", team="t", is_admin=True, models=("a", "b"), rpm=3, ipm=None, virtual_key="vk",
                    identity="key:k1", budget_period="monthly", budgeted=True, own_budget=False)  # fmt: skip
    assert codec.decode_caller(orjson.loads(orjson.dumps(codec.encode_caller(caller)))) == caller
    outcome = Outcome(2, Usage(10, 20, 30, 4, 6, 20, 0, 1), ImageMeta(5, "1024x1024", "low", "opaque"), upstream_cost_nusd=9)
    stored = orjson.loads(orjson.dumps(codec.encode_outcome(outcome, "succeeded", None, Deployment("up", "m"))))
    assert codec.decode_outcome(stored) == ("succeeded", outcome, None, Deployment("up", "m"))
