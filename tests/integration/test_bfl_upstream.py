"""The ``bfl`` provider against a stand-in Black Forest Labs API
(tests/standin_bfl.py), through the real server, called with the official
``openai`` SDK (and httpx for raw streams and hang-ups): submissions on
``/v1/{model}`` with ``x-key``, polling the returned ``polling_url`` only,
the result fetched before it expires, sizes mapped per model and the image
made the asked size, n jobs, BFL's cost as the charge, BFL's failures mapped,
fallback on 429, keep-alive streams, hang-ups and deadlines that stop the
polling, and a key that never leaves BFL's hosts."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from pydantic import ValidationError
from standin_bfl import KEY, BFLStandIn, Fault

from imagegate.providers.bfl import BFLOptions
from support import SIGNING_KEY, Running, decode_b64, decode_bytes, make_image, make_mask, standin_fixtures

FAST = {"poll_initial_seconds": 0.05, "poll_max_seconds": 0.1}


def gateway_config(base_url: str) -> dict[str, Any]:
    bfl = {"type": "bfl", "base_url": base_url, "api_key": KEY, **FAST}
    kontext = {"rules": "flux-kontext-pro"}
    return {
        "storage": {"signing_key": SIGNING_KEY},
        "routing": {"max_attempts": 2, "backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.05, "cooldown_failures": 50},
        "providers": {
            "bfl": bfl,
            "bfl-a": {**bfl, "headers": {"x-which": "a"}},
            "bfl-b": {**bfl, "headers": {"x-which": "b"}},
            "bfl-slow": {**bfl, "job_timeout_seconds": 0.6},
        },
        "models": {
            **{
                name: [{"provider": "bfl"}]
                for name in (
                    "flux-kontext-pro",
                    "flux-kontext-max",
                    "flux-2-pro",
                    "flux-2-flex",
                    "flux-2-klein-4b",
                    "flux-pro-1.1",
                    "flux-pro-1.1-ultra",
                    "flux-pro-1.0-fill",
                )  # fmt: skip
            },
            "kontext-twice": {
                **kontext,
                "deployments": [
                    {"provider": "bfl-a", "model": "flux-kontext-pro"},
                    {"provider": "bfl-b", "model": "flux-kontext-pro"},
                ],
            },  # fmt: skip
            "kontext-once": {**kontext, "deployments": [{"provider": "bfl-a", "model": "flux-kontext-pro"}]},
            "kontext-deadline": {**kontext, "deployments": [{"provider": "bfl-slow", "model": "flux-kontext-pro"}]},
            # the request's own deadline (routing), shorter than the job's time
            "kontext-short": {
                **kontext,
                "deployments": [{"provider": "bfl", "model": "flux-kontext-pro"}],
                "routing": {"deadline_seconds": 1.0, "max_attempts": 1},
            },
        },
    }


upstream, gateway, up = standin_fixtures(BFLStandIn, gateway_config, "bfl")


@pytest.fixture(scope="module")
def foreign() -> Iterator[BFLStandIn]:
    """A second host (``localhost``, not ``127.0.0.1``) a polling_url may name."""
    with BFLStandIn() as other:
        yield other


@pytest.fixture
def sdk(gateway: Running) -> openai.OpenAI:
    return gateway.sdk()


def _post(gateway: Running, body: dict[str, Any], endpoint: str = "generations") -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/v1/images/{endpoint}", json=body, timeout=30)


def _body(up: BFLStandIn, i: int = 0) -> dict[str, Any]:
    body = up.submissions()[i].json
    assert isinstance(body, dict)
    return body


def _usd(credits: float) -> str:
    return f"{Decimal(str(credits)) / 100:.6f}"


def _wait_until(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# -- edits, sizes, n, cost ---------------------------------------------------------------------


def test_a_two_image_multipart_edit_becomes_input_images_and_the_asked_size(up: BFLStandIn, sdk: openai.OpenAI) -> None:
    first, second = make_image(96, 64, "PNG"), make_image(80, 80, "JPEG")
    raw = sdk.images.with_raw_response.edit(
        model="flux-kontext-pro",
        image=[("a.png", first, "image/png"), ("b.jpg", second, "image/jpeg")],
        prompt="put the cat from image 2 on the sofa from image 1",
        size="1024x1536",
    )
    (sub,) = up.submissions()
    assert sub.path == "/v1/flux-kontext-pro" and sub.headers["x-key"] == KEY and "authorization" not in sub.headers
    assert _body(up) == {
        "prompt": "put the cat from image 2 on the sofa from image 1",
        "aspect_ratio": "2:3",  # 1024x1536, BFL's ~1 MP at 2:3
        "output_format": "png",
        "input_image": base64.b64encode(first).decode(),  # the client's exact bytes
        "input_image_2": base64.b64encode(second).decode(),
    }
    assert sub.images == {"input_image": first, "input_image_2": second}
    # polled on the returned polling_url only, with the key
    assert up.polls and all(p.path.startswith("/cluster-1/v1/get_result?id=") and p.headers["x-key"] == KEY for p in up.polls)
    (item,) = raw.parse().data
    img = decode_b64(item.b64_json)
    assert (img.format, img.size, img.mode) == ("PNG", (1024, 1536), "RGB")
    assert raw.headers["x-imagegate-resized"] == "832x1248->1024x1536; scale"
    assert raw.headers["x-imagegate-cost-usd"] == _usd(4)  # BFL's cost: 4 credits


def test_n_makes_n_jobs_each_with_its_own_seed_and_their_costs_add_up(up: BFLStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(
        model="flux-kontext-max", prompt="three foxes", n=3, size="1536x1024", extra_body={"seed": 7}
    )
    result = raw.parse()
    assert len(result.data) == 3 and all(decode_b64(d.b64_json).size == (1536, 1024) for d in result.data)
    bodies = [s.json for s in up.submissions()]
    assert sorted(b["seed"] for b in bodies) == [7, 8, 9]  # type: ignore[index]
    assert {b["aspect_ratio"] for b in bodies} == {"3:2"}  # type: ignore[index]
    assert raw.headers["x-imagegate-cost-usd"] == _usd(3 * 8)


@pytest.mark.parametrize("size,credits", [("1024x1024", 3), ("1920x1088", 4.5), ("2048x2048", 7.5)])
def test_flux2_takes_the_size_as_width_and_height_and_charges_bfls_cost(
    up: BFLStandIn, sdk: openai.OpenAI, size: str, credits: float
) -> None:
    raw = sdk.images.with_raw_response.generate(model="flux-2-pro", prompt="a lighthouse", size=size, output_format="jpeg")
    width, height = (int(v) for v in size.split("x"))
    assert _body(up) == {"prompt": "a lighthouse", "width": width, "height": height, "output_format": "jpeg"}
    img = decode_b64(raw.parse().data[0].b64_json)
    assert (img.format, img.size) == ("JPEG", (width, height)) and "x-imagegate-resized" not in raw.headers
    answer_cost = credits  # what the stand-in answered as `cost`
    assert raw.headers["x-imagegate-cost-usd"] == _usd(answer_cost)


def test_flux2_edit_input_images_are_charged_as_bfl_states(up: BFLStandIn, sdk: openai.OpenAI, gateway: Running) -> None:
    refs = [make_image(1024, 1024, "PNG"), make_image(640, 480, "WEBP")]
    raw = sdk.images.with_raw_response.edit(
        model="flux-2-flex",
        image=[("a.png", refs[0], "image/png"), ("b.webp", refs[1], "image/webp")],
        prompt="merge them",
        size="1024x1024",
        output_format="webp",
        extra_body={"steps": 30, "guidance": 5.5, "safety_tolerance": 1},
    )
    body = _body(up)
    assert {k: v for k, v in body.items() if not k.startswith("input_image")} == {
        "prompt": "merge them", "width": 1024, "height": 1024, "steps": 30, "guidance": 5.5, "safety_tolerance": 1,
        "output_format": "png",  # webp is the gateway's conversion of BFL's png
    }  # fmt: skip
    assert decode_b64(raw.parse().data[0].b64_json).format == "WEBP"
    # 6 (first MP) + 2 input megapixels x 6 = 18 credits, as the stand-in computed it
    assert raw.headers["x-imagegate-cost-usd"] == _usd(18)


def test_ultra_maps_size_to_an_aspect_ratio_and_fill_converts_the_mask(up: BFLStandIn, sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(
        model="flux-pro-1.1-ultra", prompt="x", size="1792x1024", extra_body={"raw": True}
    )
    assert _body(up) == {"prompt": "x", "raw": True, "aspect_ratio": "16:9", "output_format": "png"}
    assert decode_b64(raw.parse().data[0].b64_json).size == (1792, 1024)
    assert raw.headers["x-imagegate-cost-usd"] == _usd(6)
    up.reset()
    source = make_image(64, 48, "PNG")
    result = sdk.images.edit(
        model="flux-pro-1.0-fill",
        image=("a.png", source, "image/png"),
        mask=("m.png", make_mask(64, 48, (8, 8, 24, 16)), "image/png"),
        prompt="a window",
        extra_body={"steps": 20, "guidance": 30},
    )
    sub = up.submissions()[0]
    assert sub.images["image"] == source and {"steps": 20, "guidance": 30}.items() <= _body(up).items()
    mask = Image.open(io.BytesIO(sub.images["mask"]))
    assert mask.mode == "L" and mask.size == (64, 48)
    assert mask.getpixel((10, 10)) == 255 and mask.getpixel((40, 30)) == 0  # BFL's: white = inpaint
    assert decode_b64(result.data[0].b64_json).size == (64, 48)


REFUSED = [
    # (model, body, param, code): each a 400 before anything is sent
    ("flux-2-pro", {"user": "u-1"}, "user", "unsupported_parameter"),
    ("flux-2-pro", {"quality": "high"}, "quality", "unsupported_parameter"),
    ("flux-2-pro", {"webhook_url": "https://example.com/hook"}, "webhook_url", "unknown_parameter"),
    ("flux-2-pro", {"safety_tolerance": 6}, "safety_tolerance", "integer_above_max_value"),
    ("flux-2-pro", {"size": "1000x1000"}, "size", "invalid_value"),  # not multiples of 16
    ("flux-2-pro", {"prompt_upsampling": True}, "prompt_upsampling", "unknown_parameter"),
    ("flux-2-flex", {"steps": 51}, "steps", "integer_above_max_value"),
    ("flux-kontext-pro", {"size": "1024x1024", "aspect_ratio": "1:1"}, "aspect_ratio", "conflicting_parameters"),
    ("flux-kontext-pro", {"aspect_ratio": "9:1"}, "aspect_ratio", "invalid_value"),
    ("flux-kontext-pro", {"size": "2048x512"}, "size", "invalid_value"),  # 4:1, beyond 7:3
    ("flux-kontext-pro", {"background": "transparent"}, "background", "unsupported_parameter"),
    ("flux-pro-1.1", {"size": "1536x1024"}, "size", "invalid_value"),  # beyond 1440
    ("flux-pro-1.1", {"n": 11}, "n", "integer_above_max_value"),
]


@pytest.mark.parametrize("model,body,param,code", REFUSED, ids=[f"{m}-{p}-{c}" for m, _, p, c in REFUSED])
def test_what_bfl_cannot_take_is_a_400_naming_it(
    up: BFLStandIn, gateway: Running, model: str, body: dict[str, Any], param: str, code: str
) -> None:
    r = _post(gateway, {"model": model, "prompt": "x", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code), err
    assert up.received == []


# -- BFL's failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "trigger,status,code",
    [("[moderate-request]", 400, "content_policy_violation"), ("[moderate-content]", 400, "content_policy_violation"),
     ("[error]", 502, "upstream_job_failed"), ("[lost]", 502, "upstream_job_lost"),
     ("[sample-404]", 502, "upstream_error")],
)  # fmt: skip
def test_a_failed_job_is_mapped_and_not_charged(up: BFLStandIn, gateway: Running, trigger: str, status: int, code: str) -> None:
    r = _post(gateway, {"model": "kontext-once", "prompt": f"a cat {trigger}"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.json()
    assert r.headers["x-imagegate-cost-usd"] == "0.000000"
    assert len(up.submissions()) == 1 and r.headers["x-imagegate-attempts"] == "1"  # a started job is never resubmitted


def test_an_undocumented_status_is_polled_again(up: BFLStandIn, sdk: openai.OpenAI) -> None:
    up.polls_until_ready = 4
    result = sdk.images.generate(model="flux-kontext-pro", prompt="x [unknown-status]")
    assert len(result.data) == 1 and len(up.polls) == 4


def test_bfls_refusals_at_submission(up: BFLStandIn, gateway: Running) -> None:
    r = _post(gateway, {"model": "kontext-once", "prompt": "x [no-credits]"})
    assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_insufficient_credits"), r.text
    assert "Insufficient credits" in r.json()["error"]["message"]
    up.reset()
    r = _post(gateway, {"model": "flux-2-pro", "prompt": "x [invalid]", "size": "1024x1024"})
    err = r.json()["error"]
    assert (r.status_code, err["param"], err["code"]) == (400, "size", "invalid_value"), r.text  # BFL's width: the client's size
    assert "multiple of 16" in err["message"]
    up.reset()
    up.script.extend(Fault(403, {"detail": "Not authenticated"}) for _ in range(2))  # once per attempt
    r = _post(gateway, {"model": "kontext-once", "prompt": "x"})
    assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_auth_error"), r.text
    assert "Not authenticated" not in r.text  # nothing of BFL's text (it may quote the key)


UNREADABLE_COSTS = ["n/a", "", -4, True, {"credits": 4}, [4], "NaN", "Infinity"]


@pytest.mark.parametrize("cost", UNREADABLE_COSTS, ids=[repr(c) for c in UNREADABLE_COSTS])
def test_a_cost_bfl_states_unreadably_is_a_502(up: BFLStandIn, sdk: openai.OpenAI, cost: Any) -> None:
    poll = f"{up.origin}/cluster-1/v1/get_result?id=t-1"
    up.script.append(Fault(200, {"id": "t-1", "polling_url": poll, "cost": cost, "input_mp": 0, "output_mp": 1}))
    with pytest.raises(openai.APIStatusError) as info:
        sdk.images.generate(model="kontext-twice", prompt="x")
    assert (info.value.status_code, info.value.code) == (502, "invalid_upstream_response")
    assert "cost is not a number of credits" in info.value.message
    # not polled, and not resubmitted to the other deployment: the job may be running (and charged) at BFL
    assert up.polls == [] and len(up.submissions()) == 1
    assert info.value.response.headers["x-imagegate-attempts"] == "1"


def test_a_429_falls_back_to_the_other_deployment(up: BFLStandIn, gateway: Running) -> None:
    up.script.append(Fault(429, {"detail": "You have reached the maximum of 24 active tasks."}))
    r = _post(gateway, {"model": "kontext-twice", "prompt": "x"})
    assert r.status_code == 200, r.text
    first, second = up.submissions()
    assert {first.headers["x-which"], second.headers["x-which"]} == {"a", "b"}  # another deployment
    assert r.headers["x-imagegate-attempts"] == "2" and r.headers["x-imagegate-cost-usd"] == _usd(4)


def test_jobs_over_bfls_concurrency_cap_are_refused_and_the_others_returned(up: BFLStandIn, sdk: openai.OpenAI) -> None:
    up.cap, up.polls_until_ready = 2, 3
    raw = sdk.images.with_raw_response.generate(model="kontext-once", prompt="x", n=3)
    assert len(raw.parse().data) == 2  # the third job got BFL's 429
    assert len(up.submissions()) == 3 and len(up.tasks) == 2
    assert raw.headers["x-imagegate-cost-usd"] == _usd(2 * 4)


# -- streams, hang-ups, deadlines, result URLs -----------------------------------------------


def test_a_stream_gets_keep_alive_comments_then_the_image(up: BFLStandIn, gateway: Running) -> None:
    up.polls_until_ready = 4
    body = {"model": "flux-kontext-pro", "prompt": "x", "stream": True, "size": "1024x1024"}
    with httpx.stream("POST", f"{gateway.base_url}/v1/images/generations", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    comments = [line for line in lines if line.startswith(":")]
    assert len(comments) >= 3 and all("Pending" in c for c in comments), lines
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert events == ["image_generation.completed"]
    assert lines.index(comments[-1]) < lines.index("event: image_generation.completed")
    data = json.loads(next(line for line in lines if line.startswith("data: ")).removeprefix("data: "))
    assert decode_b64(data["b64_json"]).size == (1024, 1024)


def test_a_client_that_hangs_up_stops_the_polling(up: BFLStandIn, gateway: Running) -> None:
    with pytest.raises(httpx.ReadTimeout):
        _post_with_timeout(gateway, {"model": "flux-kontext-pro", "prompt": "x [never]"}, 0.6)
    (task_id,) = up.tasks
    seen: list[int] = []

    def settled() -> bool:  # no poll for 0.4 s (polls come every 0.1 s at most)
        seen.append(up.polls_of(task_id))
        time.sleep(0.4)
        return up.polls_of(task_id) == seen[-1]

    _wait_until(settled)
    assert seen[-1] >= 2
    time.sleep(0.5)
    assert up.polls_of(task_id) == seen[-1]  # the server noticed the hang-up: no more polls
    assert up.other == []  # BFL documents no cancel call: none was made


def _post_with_timeout(gateway: Running, body: dict[str, Any], seconds: float) -> httpx.Response:
    with httpx.Client(timeout=seconds) as client:
        return client.post(f"{gateway.base_url}/v1/images/generations", json=body)


def test_a_job_past_its_time_is_a_504_and_no_longer_polled(up: BFLStandIn, gateway: Running) -> None:
    r = _post(gateway, {"model": "kontext-deadline", "prompt": "x [never]"})
    assert (r.status_code, r.json()["error"]["code"]) == (504, "upstream_timeout"), r.text
    assert r.headers["x-imagegate-attempts"] == "1" and len(up.submissions()) == 1  # started: not resubmitted
    (task_id,) = up.tasks
    polled = up.polls_of(task_id)
    time.sleep(0.4)
    assert up.polls_of(task_id) == polled and up.other == []


def test_a_stream_kept_alive_still_ends_at_the_requests_deadline(up: BFLStandIn, gateway: Running) -> None:
    body = {"model": "kontext-short", "prompt": "x [never]", "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{gateway.base_url}/v1/images/generations", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    took = time.monotonic() - started
    assert any(line.startswith(":") for line in lines) and 1.0 <= took < 3.0, (took, lines)
    assert lines[-2] == "event: error", lines
    assert json.loads(lines[-1].removeprefix("data: "))["error"]["code"] == "deadline_exceeded"
    (task_id,) = up.tasks
    polled = up.polls_of(task_id)
    time.sleep(0.4)
    assert up.polls_of(task_id) == polled  # the job's polling ended with the stream


def test_the_result_is_fetched_before_its_url_expires(up: BFLStandIn, gateway: Running, sdk: openai.OpenAI) -> None:
    up.sample_ttl = 0.5
    result = sdk.images.generate(model="flux-kontext-pro", prompt="x", response_format="url")
    (path,) = up.fetched  # downloaded once, at once, without the key
    assert result.data[0].url and not result.data[0].url.startswith(up.origin)  # the gateway's own URL, never BFL's
    assert decode_bytes(httpx.get(result.data[0].url, timeout=10).content).size == (1024, 1024)
    time.sleep(0.6)
    assert httpx.get(f"{up.origin}{path}", timeout=10).status_code == 403  # the stand-in's URL has expired


def test_a_polling_url_on_a_foreign_host_is_a_502_and_gets_no_key(up: BFLStandIn, foreign: BFLStandIn, gateway: Running) -> None:
    foreign.reset()
    up.foreign_origin = foreign.origin.replace("127.0.0.1", "localhost")
    r = _post(gateway, {"model": "kontext-once", "prompt": "x [foreign-poll]"})
    assert (r.status_code, r.json()["error"]["code"]) == (502, "invalid_upstream_response"), r.text
    assert "does not send the credential to" in r.json()["error"]["message"]
    assert foreign.polls == [] and foreign.received == [] and foreign.other == []  # nothing, x-key least of all
    assert up.polls == [] and r.headers["x-imagegate-attempts"] == "1"


def test_the_provider_never_builds_its_own_poll_url(up: BFLStandIn) -> None:
    """The stand-in's documented path answers Task not found: only the returned URL works."""
    r = httpx.get(f"{up.origin}/v1/get_result", params={"id": "anything"}, headers={"x-key": KEY}, timeout=10)
    assert r.json()["status"] == "Task not found"


# -- options -------------------------------------------------------------------------------------


def test_a_region_picks_bfls_regional_endpoint() -> None:
    assert BFLOptions().base_url == "https://api.bfl.ai/v1"
    assert BFLOptions(region="eu").base_url == "https://api.eu.bfl.ai/v1"
    assert BFLOptions(region="us").base_url == "https://api.us.bfl.ai/v1"
    with pytest.raises(ValidationError, match="region or base_url"):
        BFLOptions(region="eu", base_url="https://api.bfl.ai/v1")
    with pytest.raises(ValidationError):
        BFLOptions(headers={"X-Key": "leak"})  # the key goes in api_key
