"""Asynchronous image jobs through the real server (raw HTTP for jobs, the
official SDK for the synchronous side), against the stand-in OpenAI upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from standin_openai import Fault
from test_jobs_crash import MASTER, SlowOpenAI, admin, config, money, new_key

from support import Running, data_url, decode_b64, decode_bytes, make_image, make_mask, run_server

ASYNC = {"Prefer": "respond-async"}
LOW = {"model": "gpt-image-1", "size": "1024x1024", "quality": "low"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[SlowOpenAI]:
    with SlowOpenAI() as standin:
        yield standin


@pytest.fixture
def up(upstream: SlowOpenAI) -> SlowOpenAI:
    upstream.reset()
    upstream.delay, upstream.aborted = 0.0, 0
    return upstream


@pytest.fixture(scope="module")
def gateway(upstream: SlowOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    cfg = config(upstream.base_url)
    cfg["models"]["dall-e-2"] = [{"provider": "up"}]
    cfg["jobs"] = {**cfg["jobs"], "lease_seconds": 1.5}
    with run_server(cfg, tmp_path_factory.mktemp("jobs")) as running:
        yield running


@pytest.fixture(scope="module")
def key(gateway: Running) -> dict[str, Any]:
    return new_key(gateway.base_url)


def client(gateway: Running, secret: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def wait_job(http: httpx.Client, job_id: str, seconds: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        job = http.get(f"/v1/images/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def submit(http: httpx.Client, path: str = "/v1/images/generations", **kwargs: Any) -> httpx.Response:
    headers = {**ASYNC, **kwargs.pop("headers", {})}
    return http.post(path, headers=headers, **kwargs)


# -- the three endpoints -----------------------------------------------------------


def test_generation_202_then_poll_to_the_images_response(up: SlowOpenAI, gateway: Running, key: dict[str, Any]) -> None:
    with client(gateway, key["key"]) as http:
        r = submit(http, json={**LOW, "prompt": "a red fox"})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["object"] == "image.job" and job["status"] == "queued" and job["id"].startswith("imgjob_")
        assert r.headers["location"] == f"/v1/images/jobs/{job['id']}"
        assert r.headers["preference-applied"] == "respond-async"
        assert job["status_url"] == f"{gateway.base_url}/v1/images/jobs/{job['id']}"
        assert Decimal(job["reserved_usd"]) > 0 and job["model"] == "gpt-image-1" and job["endpoint"] == "generations"
        done = wait_job(http, job["id"])
    assert done["status"] == "succeeded", done
    image = decode_b64(done["result"]["data"][0]["b64_json"])
    assert (image.format, image.size) == ("PNG", (1024, 1024))
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    assert Decimal(done["cost_usd"]) > 0 and done["reserved_usd"] == "0.000000"
    (rec,) = up.received
    assert rec.json == {**LOW, "prompt": "a red fox"}  # the request as sent, nothing dropped


def test_edit_multipart_with_two_images_and_a_mask(up: SlowOpenAI, gateway: Running, key: dict[str, Any]) -> None:
    images = [make_image(128, 128, "PNG"), make_image(128, 128, "JPEG")]
    mask = make_mask(128, 128, (0, 0, 64, 64))
    files = [("image[]", ("a.png", images[0], "image/png")), ("image[]", ("b.jpg", images[1], "image/jpeg")),
             ("mask", ("m.png", mask, "image/png"))]  # fmt: skip
    with client(gateway, key["key"]) as http:
        r = submit(http, "/v1/images/edits", data={**LOW, "prompt": "merge", "input_fidelity": "high"}, files=files)
        assert r.status_code == 202, r.text
        done = wait_job(http, r.json()["id"])
    assert done["status"] == "succeeded", done
    assert decode_b64(done["result"]["data"][0]["b64_json"]).size == (1024, 1024)
    (rec,) = up.received
    assert [(f[0], f[3]) for f in rec.files] == [("image[]", images[0]), ("image[]", images[1]), ("mask", mask)]
    assert rec.fields == {**LOW, "prompt": "merge", "input_fidelity": "high"}


def test_edit_json_with_an_image_url(up: SlowOpenAI, gateway: Running, key: dict[str, Any]) -> None:
    src = make_image(48, 48)
    with client(gateway, key["key"]) as http:
        r = submit(http, "/v1/images/edits", json={**LOW, "prompt": "x", "images": [{"image_url": data_url(src)}]})
        assert r.status_code == 202, r.text
        done = wait_job(http, r.json()["id"])
    assert done["status"] == "succeeded", done
    assert up.received[0].files[0][3] == src  # fetched once, at submission; the bytes stored as sent


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_variation_and_a_url_result(up: SlowOpenAI, gateway: Running, key: dict[str, Any]) -> None:
    src = make_image(256, 256)
    with client(gateway, key["key"]) as http:
        r = submit(http, "/v1/images/variations", data={"model": "dall-e-2", "size": "512x512", "response_format": "url"},
                   files=[("image", ("v.png", src, "image/png"))])  # fmt: skip
        assert r.status_code == 202, r.text
        done = wait_job(http, r.json()["id"])
        assert done["status"] == "succeeded", done
        url = done["result"]["data"][0]["url"]
        got = httpx.get(url, timeout=30)
        assert got.status_code == 200 and decode_bytes(got.content).size == (512, 512)
        again = http.get(f"/v1/images/jobs/{done['id']}").json()["result"]["data"][0]["url"]
        assert httpx.get(again, timeout=30).status_code == 200  # issued afresh at each read
    assert up.received[0].path == "/v1/images/variations"


def test_the_sync_side_is_unchanged(up: SlowOpenAI, gateway: Running, key: dict[str, Any]) -> None:
    sdk = gateway.sdk(api_key=key["key"])
    answer = sdk.images.generate(prompt="sync", **LOW)  # type: ignore[arg-type]
    assert answer.data and decode_b64(answer.data[0].b64_json or "").format == "PNG"


# -- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 500])
def test_a_failed_job_holds_the_error_a_sync_call_gives(
    up: SlowOpenAI, gateway: Running, key: dict[str, Any], status: int
) -> None:
    envelope = {"error": {"message": "nope", "type": "invalid_request_error", "param": "prompt", "code": "bad_prompt"}}
    up.script.append(Fault("status", status, envelope))
    sdk = gateway.sdk(api_key=key["key"])
    with pytest.raises(openai.APIStatusError) as sync:
        sdk.images.generate(prompt="fail", **LOW)  # type: ignore[arg-type]
    up.script.append(Fault("status", status, envelope))
    spent_before, _ = money(gateway.base_url, key["id"])
    with client(gateway, key["key"]) as http:
        done = wait_job(http, submit(http, json={**LOW, "prompt": "fail"}).json()["id"])
    assert done["status"] == "failed" and done["status_code"] == sync.value.status_code
    assert {"error": done["error"]} == sync.value.response.json()
    assert done["cost_usd"] == "0.000000"
    assert money(gateway.base_url, key["id"]) == (spent_before, 0)


def test_stream_with_respond_async_is_a_400(gateway: Running, key: dict[str, Any]) -> None:
    with client(gateway, key["key"]) as http:
        r = submit(http, json={**LOW, "prompt": "x", "stream": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"


@pytest.mark.parametrize(
    ("prefer", "is_async"),
    [("respond-async", True), ("wait=10, Respond-Async", True), ("RESPOND-ASYNC; x=1", True),
     ("handling=lenient", False), ("respond-asyncx", False), ("return=minimal;respond-async", False)],
)  # fmt: skip
def test_prefer_is_parsed_as_rfc_7240(gateway: Running, key: dict[str, Any], prefer: str, is_async: bool) -> None:
    with client(gateway, key["key"]) as http:
        r = http.post("/v1/images/generations", json={**LOW, "prompt": "p"}, headers={"Prefer": prefer})
    assert r.status_code == (202 if is_async else 200), r.text
    assert ("preference-applied" in r.headers) is is_async


# -- cancel ------------------------------------------------------------------------------


def test_cancel_a_running_job_stops_the_upstream_call(up: SlowOpenAI, gateway: Running, key: dict[str, Any]) -> None:
    up.delay = 10.0
    with client(gateway, key["key"]) as http:
        job = submit(http, json={**LOW, "prompt": "slow"}).json()
        deadline = time.monotonic() + 10
        while not up.received:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = http.delete(f"/v1/images/jobs/{job['id']}")
        assert r.status_code == 200 and r.json()["id"] == job["id"]
        done = wait_job(http, job["id"], seconds=5)
        assert done["status"] == "cancelled" and done["error"]["code"] == "job_cancelled"
        assert done["cost_usd"] == "0.000000"
        deadline = time.monotonic() + 5
        while up.aborted < 1:  # the stand-in saw the request go away
            assert time.monotonic() < deadline
            time.sleep(0.02)
        again = http.delete(f"/v1/images/jobs/{job['id']}")
        assert again.status_code == 409 and "cancelled" in again.json()["error"]["message"]
    assert money(gateway.base_url, key["id"])[1] == 0


# -- who sees what ------------------------------------------------------------------------


def test_another_keys_job_is_a_404_and_the_master_sees_all(up: SlowOpenAI, gateway: Running, key: dict[str, Any]) -> None:
    other = new_key(gateway.base_url)
    with client(gateway, key["key"]) as mine:
        job = submit(mine, json={**LOW, "prompt": "private"}).json()
    with client(gateway, other["key"]) as theirs:
        for r in (theirs.get(f"/v1/images/jobs/{job['id']}"), theirs.delete(f"/v1/images/jobs/{job['id']}")):
            assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
        assert theirs.get("/v1/images/jobs").json()["data"] == []
    with client(gateway, MASTER) as master:
        assert master.get(f"/v1/images/jobs/{job['id']}").status_code == 200


def test_idempotency_key_gives_the_same_job(up: SlowOpenAI, gateway: Running, key: dict[str, Any]) -> None:
    with client(gateway, key["key"]) as http:
        headers = {"Idempotency-Key": "job-once-1"}
        first = submit(http, json={**LOW, "prompt": "once"}, headers=headers)
        second = submit(http, json={**LOW, "prompt": "once"}, headers=headers)
        assert (first.status_code, second.status_code) == (202, 200)
        assert second.json()["id"] == first.json()["id"]
        assert second.headers["x-imagegate-idempotent-replay"] == "true"
        other = submit(http, json={**LOW, "prompt": "different"}, headers=headers)
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
        wait_job(http, first.json()["id"])
    with client(gateway, new_key(gateway.base_url)["key"]) as theirs:  # another key's same Idempotency-Key: its own job
        mine = submit(theirs, json={**LOW, "prompt": "once"}, headers=headers)
        assert mine.status_code == 202 and mine.json()["id"] != first.json()["id"]
        wait_job(theirs, mine.json()["id"])
    assert [r.json["prompt"] for r in up.received if r.json] == ["once", "once"]


# -- a server whose workers run nothing: queued jobs ---------------------------------------


@pytest.fixture(scope="module")
def idle(upstream: SlowOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    cfg = config(upstream.base_url)
    cfg["jobs"] = {"workers": 0, "max_queued_per_key": 3}
    with run_server(cfg, tmp_path_factory.mktemp("idle")) as running:
        yield running


def test_queued_jobs_list_cancel_and_the_cap(up: SlowOpenAI, idle: Running) -> None:
    key = new_key(idle.base_url)
    with client(idle, key["key"]) as http:
        ids = [submit(http, json={**LOW, "prompt": f"q{i}"}).json()["id"] for i in range(3)]
        capped = submit(http, json={**LOW, "prompt": "q3"})
        assert capped.status_code == 429 and capped.json()["error"]["code"] == "too_many_queued_jobs"
        spent, reserved = money(idle.base_url, key["id"])
        assert spent == 0 and reserved > 0
        page = http.get("/v1/images/jobs", params={"limit": 2}).json()
        assert page["object"] == "list" and [j["id"] for j in page["data"]] == ids[::-1][:2]
        assert page["has_more"] is True and page["first_id"] == ids[2] and page["last_id"] == ids[1]
        rest = http.get("/v1/images/jobs", params={"limit": 2, "after": page["last_id"]}).json()
        assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False
        for job_id in ids:
            r = http.delete(f"/v1/images/jobs/{job_id}")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert money(idle.base_url, key["id"]) == (0, 0)
    assert up.received == []  # nothing ran
    usage = admin(idle.base_url, "GET", "/admin/usage", params={"key": key["id"], "group_by": "key"}).json()["data"]
    assert usage[0]["requests"] >= 3 and Decimal(usage[0]["cost_usd"]) == 0


def test_results_are_not_kept_past_their_time(tmp_path: Path, upstream: SlowOpenAI) -> None:
    cfg = config(upstream.base_url)
    cfg["storage"] = {**cfg["storage"], "url_ttl_seconds": 1, "sweep_interval_seconds": 0.3}
    upstream.reset()
    upstream.delay = 0.0
    with run_server(cfg, tmp_path) as gw:
        key = new_key(gw.base_url)
        with client(gw, key["key"]) as http:
            done = wait_job(http, submit(http, json={**LOW, "prompt": "brief"}).json()["id"])
            assert done["status"] == "succeeded"
            deadline = time.monotonic() + 10
            while http.get(f"/v1/images/jobs/{done['id']}").status_code != 404:
                assert time.monotonic() < deadline
                time.sleep(0.1)


def test_the_input_bytes_a_keys_unfinished_jobs_hold_are_capped(upstream: SlowOpenAI, tmp_path: Path) -> None:
    image = make_image(128, 128, "PNG")
    cfg = config(upstream.base_url)
    cfg["jobs"] = {"workers": 0, "max_queued_mb_per_key": 2.5 * len(image) / 2**20}  # two such edits, not three
    with run_server(cfg, tmp_path) as gw:
        key = new_key(gw.base_url)
        with client(gw, key["key"]) as http:

            def edit(prompt: str) -> httpx.Response:
                files = [("image[]", ("a.png", image, "image/png"))]
                return submit(http, "/v1/images/edits", data={**LOW, "prompt": prompt}, files=files)

            ids = [edit(f"e{i}").json()["id"] for i in range(2)]
            held = money(gw.base_url, key["id"])
            over = edit("e2")
            assert over.status_code == 429, over.text
            error = over.json()["error"]
            assert error["code"] == "too_many_queued_jobs" and "jobs.max_queued_mb_per_key" in error["message"]
            assert money(gw.base_url, key["id"]) == held  # its reservation was given back
            assert submit(http, json={**LOW, "prompt": "no input images"}).status_code == 202  # holds no bytes
            assert http.delete(f"/v1/images/jobs/{ids[0]}").json()["status"] == "cancelled"  # its inputs are deleted
            assert edit("e3").status_code == 202


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_concurrent_submissions_of_one_key_pass_its_cap_exactly(
    database: str, upstream: SlowOpenAI, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cfg = config(upstream.base_url)
    cfg["jobs"] = {"workers": 0, "max_queued_per_key": 3}
    if database == "postgresql":
        cfg["database"] = {"url": request.getfixturevalue("postgres_url")}
    with run_server(cfg, tmp_path) as gw:
        key = new_key(gw.base_url)

        async def burst() -> list[httpx.Response]:
            headers = {"Authorization": f"Bearer {key['key']}", **ASYNC}
            async with httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=30) as http:
                return await asyncio.gather(
                    *(http.post("/v1/images/generations", json={**LOW, "prompt": f"c{i}"}) for i in range(20))
                )

        answers = asyncio.run(burst())
        assert sorted(r.status_code for r in answers) == [202] * 3 + [429] * 17, [r.text for r in answers]
        accepted = [r.json() for r in answers if r.status_code == 202]
        spent, reserved = money(gw.base_url, key["id"])
        assert spent == 0 and reserved == sum(Decimal(job["reserved_usd"]) for job in accepted)  # the 17 hold nothing
        with client(gw, key["key"]) as http:
            listed = http.get("/v1/images/jobs").json()["data"]
            assert sorted(job["id"] for job in listed) == sorted(job["id"] for job in accepted)
            for job in accepted:  # the session's PostgreSQL is shared: leave no queued job behind
                assert http.delete(f"/v1/images/jobs/{job['id']}").json()["status"] == "cancelled"
        assert money(gw.base_url, key["id"]) == (0, 0)
