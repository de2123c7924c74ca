"""Signed webhooks of asynchronous jobs (issue 16, Webhooks), through the
real server on loopback: jobs submitted with raw HTTP (``Prefer:
respond-async``), webhooks received by a loopback receiver
(tests/standin_webhooks.py) and their signatures verified with the
Standard Webhooks reference library; keys and secrets through the admin API
and the CLI; a killed server's pending delivery sent after its restart."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from standardwebhooks.webhooks import WebhookVerificationError
from standin_webhooks import Received, ReceiverStandIn

from support import SIGNING_KEY, Running, admin, decode_b64, run_server, serve_process

MASTER = "master-key-for-the-webhook-tests-0123"
ENCRYPTION_KEY = Fernet.generate_key().decode()
HEADER = "Imagegate-Webhook-Url"
FAST = {  # loopback receivers, and retries in tenths of a second
    "allowed_hosts": ["127.0.0.1"], "allow_http": True, "allow_private_addresses": True,
    "timeout_seconds": 2, "initial_backoff_seconds": 0.1, "max_backoff_seconds": 0.2, "poll_seconds": 0.2,
}  # fmt: skip


def config(**webhooks: Any) -> dict[str, Any]:
    return {
        "auth": {"master_key": MASTER, "encryption_key": ENCRYPTION_KEY},
        "storage": {"signing_key": SIGNING_KEY},
        "providers": {
            "demo": {"type": "test-pattern"},
            "slow": {"type": "test-pattern", "delay_seconds": 5},
            "down": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-upstream-secret"},
        },
        "models": {
            "test-pattern": [{"provider": "demo"}],
            "slow-pattern": {"rules": "test-pattern", "deployments": [{"provider": "slow"}]},
            "gpt-image-1": {"deployments": [{"provider": "down"}], "routing": {"max_attempts": 1}},
        },
        "jobs": {"workers": 4, "poll_seconds": 0.2},
        "webhooks": {**FAST, **webhooks},
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[ReceiverStandIn]:
    with ReceiverStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with run_server(config(), tmp_path_factory.mktemp("webhooks")) as running:
        yield running


@pytest.fixture
def hooks(receiver: ReceiverStandIn) -> ReceiverStandIn:
    receiver.reset()
    return receiver


def new_key(base: str, **body: Any) -> dict[str, Any]:
    r = admin(base, MASTER, "POST", "/admin/keys", json={"name": "hooks", **body})
    assert r.status_code == 201, r.text
    return r.json()


def submit(base: str, secret: str, model: str = "test-pattern", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/images/generations",
        headers={"Authorization": f"Bearer {secret}", "Prefer": "respond-async", **(headers or {})},
        json={"model": model, "prompt": "a lighthouse", "size": "1024x1024" if model == "gpt-image-1" else "256x256"}
        | ({} if model == "gpt-image-1" else {"response_format": "b64_json"}),
        timeout=30,
    )


def job_until(base: str, secret: str, job_id: str, done: Any, seconds: float = 15) -> dict[str, Any]:
    """Poll the job until ``done(job)``."""
    deadline = time.monotonic() + seconds
    while True:
        job = httpx.get(f"{base}/v1/images/jobs/{job_id}", headers={"Authorization": f"Bearer {secret}"}, timeout=30).json()
        if done(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def delivered(job: dict[str, Any]) -> bool:
    return (job.get("webhook") or {}).get("state") in ("delivered", "failed")


def test_a_finished_job_is_posted_to_its_key_signed(gateway: Running, hooks: ReceiverStandIn) -> None:
    key = new_key(gateway.base_url, webhook_url=hooks.base_url)
    assert key["webhook_secret"].startswith("whsec_") and key["webhook_url"] == hooks.base_url
    accepted = submit(gateway.base_url, key["key"])
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    (got,) = hooks.wait_for(1)
    payload = got.verify(key["webhook_secret"])  # the reference library checks the signature and the timestamp
    assert got.path == "/hooks/imagegate" and got.headers["content-type"] == "application/json"
    assert payload["type"] == "image.job.succeeded" and payload["data"]["id"] == job_id
    assert payload["data"]["status"] == "succeeded" and payload["data"]["status_url"].endswith(f"/v1/images/jobs/{job_id}")
    assert b'"b64_json":' not in got.body and len(got.body) < 4000  # no image bytes, only a note
    assert "b64_json" in payload["data"]["result"]["note"] and payload["data"]["result"]["data"] == [{}]
    with pytest.raises(WebhookVerificationError):
        Received(got.path, got.headers, got.body.replace(job_id.encode(), b"job_other"), got.at).verify(key["webhook_secret"])
    job = job_until(gateway.base_url, key["key"], job_id, delivered)
    assert job["webhook"]["url"] == hooks.base_url and job["webhook"]["state"] == "delivered"
    (attempt,) = job["webhook"]["attempts"]
    assert attempt["status_code"] == 204 and attempt["duration_ms"] >= 0 and "T" in attempt["at"]
    image = decode_b64(job["result"]["data"][0]["b64_json"])  # the client fetches the images from the job
    assert (image.format, image.size) == ("PNG", (256, 256))


def test_a_failing_receiver_gets_the_same_webhook_until_it_accepts(
    gateway: Running, hooks: ReceiverStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imagegate.webhooks")
    key = new_key(gateway.base_url, webhook_url=hooks.base_url + "?token=s3cr3t-in-query")
    hooks.fail_next(500, 503)
    job_id = submit(gateway.base_url, key["key"]).json()["id"]
    received = hooks.wait_for(3)
    assert len({r.id for r in received}) == 1  # one webhook-id for every attempt of one event
    assert all(r.verify(key["webhook_secret"])["data"]["id"] == job_id for r in received)
    assert len({r.body for r in received}) == 1  # the same body, signed afresh each time
    job = job_until(gateway.base_url, key["key"], job_id, lambda j: j["webhook"]["state"] == "delivered")
    assert [a["status_code"] for a in job["webhook"]["attempts"]] == [500, 503, 204]
    gaps = [b.at - a.at for a, b in zip(received, received[1:], strict=False)]
    assert all(g >= 0.09 for g in gaps), gaps  # backed off between attempts
    time.sleep(0.5)
    assert len(hooks.received) == 3  # nothing after the success
    logged = caplog.text
    assert "HTTP 500" in logged and "127.0.0.1" in logged  # the failures are logged by host...
    assert "s3cr3t-in-query" not in logged and key["webhook_secret"] not in logged  # ...never the URL's query or the secret
    assert received[0].path == "/hooks/imagegate?token=s3cr3t-in-query"


def test_a_redirect_is_not_followed_and_410_stops_the_retries(gateway: Running, hooks: ReceiverStandIn) -> None:
    key = new_key(gateway.base_url, webhook_url=hooks.base_url)
    from standin_webhooks import Redirect

    hooks.fail_next(Redirect(hooks.base_url + "/elsewhere"), 410)
    job_id = submit(gateway.base_url, key["key"]).json()["id"]
    job = job_until(gateway.base_url, key["key"], job_id, lambda j: j.get("webhook", {}).get("state") == "failed")
    assert [a["status_code"] for a in job["webhook"]["attempts"]] == [307, 410]
    assert [r.path for r in hooks.received] == ["/hooks/imagegate"] * 2  # /elsewhere never asked


def test_failed_and_cancelled_jobs_have_their_own_events(gateway: Running, hooks: ReceiverStandIn) -> None:
    key = new_key(gateway.base_url, webhook_url=hooks.base_url)
    failed = submit(gateway.base_url, key["key"], "gpt-image-1")
    assert failed.status_code == 202, failed.text
    slow = submit(gateway.base_url, key["key"], "slow-pattern").json()["id"]
    cancel = httpx.delete(f"{gateway.base_url}/v1/images/jobs/{slow}", headers={"Authorization": f"Bearer {key['key']}"})
    assert cancel.status_code == 200, cancel.text
    payloads = {p["data"]["id"]: p for p in (r.verify(key["webhook_secret"]) for r in hooks.wait_for(2))}
    assert payloads[failed.json()["id"]]["type"] == "image.job.failed"
    assert payloads[failed.json()["id"]]["data"]["error"]["code"]  # the OpenAI error envelope's fields
    assert "sk-upstream-secret" not in json.dumps(payloads)
    assert payloads[slow]["type"] == "image.job.cancelled" and payloads[slow]["data"]["status"] == "cancelled"


def test_a_request_may_name_an_allowed_url_when_its_key_has_a_secret(gateway: Running, hooks: ReceiverStandIn) -> None:
    key = new_key(gateway.base_url)  # no webhook URL: no secret yet
    assert key["webhook_secret_set"] is False and "webhook_secret" not in key
    url = hooks.origin + "/per-request/hook?token=abc"
    refused = submit(gateway.base_url, key["key"], headers={HEADER: url})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == HEADER
    assert refused.json()["error"]["code"] == "webhook_secret_missing"
    rotated = admin(gateway.base_url, MASTER, "POST", f"/admin/keys/{key['id']}/webhook-secret").json()
    assert rotated["webhook_secret_set"] is True and rotated["webhook_url"] is None
    job_id = submit(gateway.base_url, key["key"], headers={HEADER: url}).json()["id"]
    (got,) = hooks.wait_for(1)
    assert got.path == "/per-request/hook?token=abc" and got.verify(rotated["webhook_secret"])["data"]["id"] == job_id
    assert (
        httpx.get(f"{gateway.base_url}/admin/keys/{key['id']}", headers={"Authorization": f"Bearer {MASTER}"}).json()[
            "webhook_url"
        ]
        is None
    )  # the header does not change the key


def test_a_refused_per_request_url_is_a_400_before_the_job_exists(tmp_path: Path, hooks: ReceiverStandIn) -> None:
    strict = config(allowed_hosts=["127.0.0.1", "*.example.com"], allow_http=False, allow_private_addresses=False)
    with run_server(strict, tmp_path) as gateway:
        key = new_key(gateway.base_url)
        admin(gateway.base_url, MASTER, "POST", f"/admin/keys/{key['id']}/webhook-secret")
        cases = {
            "http://127.0.0.1/hook": ("invalid_webhook_url", "https://"),
            "https://127.0.0.1/hook": ("invalid_webhook_url", "non-public"),
            "https://hooks.not-listed.net/hook": ("webhook_host_not_allowed", "allowed_hosts"),
            "https://localhost/hook": ("webhook_host_not_allowed", "allowed_hosts"),
            "not a url": ("invalid_webhook_url", "https://"),
        }
        for url, (code, words) in cases.items():
            r = submit(gateway.base_url, key["key"], headers={HEADER: url})
            assert r.status_code == 400, (url, r.text)
            error = r.json()["error"]
            assert (error["param"], error["code"]) == (HEADER, code) and words in error["message"], (url, error)
        listed = httpx.get(f"{gateway.base_url}/v1/images/jobs", headers={"Authorization": f"Bearer {key['key']}"}).json()
        assert listed["data"] == []
        view = admin(gateway.base_url, MASTER, "GET", f"/admin/keys/{key['id']}").json()
        assert view["reserved_usd"] == "0.000000"
        # the admin's key URL: the same address rules, a 400 naming webhook_url, nothing changed
        r = admin(gateway.base_url, MASTER, "PATCH", f"/admin/keys/{key['id']}", json={"webhook_url": "https://127.0.0.1/h"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url"
        assert admin(gateway.base_url, MASTER, "GET", f"/admin/keys/{key['id']}").json()["webhook_url"] is None
    assert hooks.received == []


def test_a_rotated_secret_signs_from_then_on(gateway: Running, hooks: ReceiverStandIn) -> None:
    key = new_key(gateway.base_url, webhook_url=hooks.base_url)
    rotated = admin(gateway.base_url, MASTER, "POST", f"/admin/keys/{key['id']}/webhook-secret").json()
    assert rotated["webhook_secret"] != key["webhook_secret"] and "key" not in rotated
    submit(gateway.base_url, key["key"])
    (got,) = hooks.wait_for(1)
    got.verify(rotated["webhook_secret"])
    with pytest.raises(WebhookVerificationError):
        got.verify(key["webhook_secret"])
    shown = admin(gateway.base_url, MASTER, "GET", f"/admin/keys/{key['id']}").json()
    assert "webhook_secret" not in shown and shown["webhook_secret_set"] is True  # shown once, never again
    # a key without a webhook URL any more sends no webhooks
    cleared = admin(gateway.base_url, MASTER, "PATCH", f"/admin/keys/{key['id']}", json={"clear": ["webhook_url"]}).json()
    assert cleared["webhook_url"] is None
    job_id = submit(gateway.base_url, key["key"]).json()["id"]
    job = job_until(gateway.base_url, key["key"], job_id, lambda j: j["status"] == "succeeded")
    time.sleep(0.5)
    assert len(hooks.received) == 1 and "webhook" not in job


def cli(config_path: Path, *args: str) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    result = subprocess.run([sys.executable, "-m", "imagegate", *args, "--config", str(config_path), "--json"],
                            capture_output=True, text=True, timeout=120, env=base)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_key_webhooks_from_the_command_line(gateway: Running, hooks: ReceiverStandIn) -> None:
    config_path = gateway.data_dir.parent / "imagegate.yaml"
    created = cli(config_path, "keys", "create", "--name", "cli-hooks", "--webhook-url", hooks.base_url + "/cli")
    assert created["webhook_url"] == hooks.base_url + "/cli" and created["webhook_secret"].startswith("whsec_")
    rotated = cli(config_path, "keys", "rotate-webhook-secret", created["id"])
    assert rotated["webhook_secret"] not in (created["webhook_secret"], None)
    submit(gateway.base_url, created["key"])
    (got,) = hooks.wait_for(1)
    assert got.path == "/hooks/imagegate/cli" and got.verify(rotated["webhook_secret"])["type"] == "image.job.succeeded"
    cleared = cli(config_path, "keys", "update", created["id"], "--clear", "webhook_url")
    assert cleared["webhook_url"] is None and cleared["webhook_secret_set"] is True
    refused = subprocess.run([sys.executable, "-m", "imagegate", "keys", "update", created["id"], "--webhook-url",
                              "ftp://127.0.0.1/x", "--config", str(config_path)], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert refused.returncode == 2 and "--webhook-url" in refused.stderr


def test_a_pending_delivery_survives_a_killed_server(tmp_path: Path, hooks: ReceiverStandIn) -> None:
    durable = config(initial_backoff_seconds=3, max_backoff_seconds=3)
    hooks.fail_next(500)
    with serve_process(durable, tmp_path) as first:
        key = new_key(first.base_url, webhook_url=hooks.base_url)
        job_id = submit(first.base_url, key["key"]).json()["id"]
        hooks.wait_for(1)
        job = job_until(first.base_url, key["key"], job_id, lambda j: len(j["webhook"]["attempts"]) == 1)
        assert job["webhook"]["state"] == "pending"
        first.kill()  # kill -9 before the retry is due
    with serve_process(durable, tmp_path, port=None) as second:
        received = hooks.wait_for(2, seconds=20)
        assert received[0].id == received[1].id and received[1].verify(key["webhook_secret"])["data"]["id"] == job_id
        job = job_until(second.base_url, key["key"], job_id, lambda j: j["webhook"]["state"] == "delivered")
        assert [a["status_code"] for a in job["webhook"]["attempts"]] == [500, 204]


def test_two_replicas_on_postgresql_deliver_each_webhook_once(tmp_path: Path, hooks: ReceiverStandIn, postgres_url: str) -> None:
    """Both replicas' loops claim from one outbox (FOR UPDATE SKIP LOCKED): each job's webhook arrives once."""
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def fresh_database() -> str:
        engine = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text('DROP DATABASE IF EXISTS "webhooks_replicas"'))
            await conn.execute(text('CREATE DATABASE "webhooks_replicas"'))
        await engine.dispose()
        return postgres_url.rsplit("/", 1)[0] + "/webhooks_replicas"

    shared = {**config(), "database": {"url": asyncio.run(fresh_database())}}
    with run_server(shared, tmp_path / "a") as one, run_server(shared, tmp_path / "b") as two:
        key = new_key(one.base_url, webhook_url=hooks.base_url)
        ids = [submit((one, two)[i % 2].base_url, key["key"]).json()["id"] for i in range(12)]
        received = hooks.wait_for(12)
        time.sleep(1.0)  # time for a second delivery of anything, were one to come
        jobs = [r.verify(key["webhook_secret"])["data"]["id"] for r in hooks.received]
        assert sorted(jobs) == sorted(ids) and len({r.id for r in received}) == 12
