"""Webhooks without a server: the URL rules, signatures the reference library
verifies, the payload without image bytes, the backoff."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from imagegate.accounting.webhook_keys import new_secret
from imagegate.config import WebhooksConfig
from imagegate.errors import InvalidRequestError
from imagegate.gateway.jobs.view import JobView
from imagegate.gateway.webhooks.deliver import backoff
from imagegate.gateway.webhooks.payload import B64_NOTE, job_payload
from imagegate.gateway.webhooks.service import message_id
from imagegate.gateway.webhooks.sign import signed_headers
from imagegate.gateway.webhooks.urls import HEADER, WebhookURLs, host_listed

# -- signatures ----------------------------------------------------------------


def test_a_new_secret_is_whsec_and_32_random_bytes() -> None:
    one, two = new_secret(), new_secret()
    assert one.startswith("whsec_") and one != two
    assert len(base64.b64decode(one.removeprefix("whsec_"))) == 32


def test_the_reference_library_verifies_the_signature_and_refuses_a_changed_body() -> None:
    secret = new_secret()
    body = b'{"type":"image.job.succeeded","data":{"id":"job_1"}}'
    headers = signed_headers(secret, "msg_abc", body)
    assert headers["webhook-id"] == "msg_abc" and headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"job_1", b"job_2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_the_signature_is_the_spec_hmac_of_id_timestamp_body() -> None:
    """Independent of the library: HMAC-SHA256 over ``id.timestamp.body`` with the decoded secret."""
    import hashlib
    import hmac

    secret = new_secret()
    at = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
    headers = signed_headers(secret, "msg_x", b"{}", at)
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"msg_x.{int(at.timestamp())}.{{}}".encode(), hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_a_job_has_one_webhook_id_without_dots() -> None:
    assert message_id("job_1") == message_id("job_1") != message_id("job_2")
    assert message_id("job.1").startswith("msg_") and "." not in message_id("job.1")


# -- URLs ----------------------------------------------------------------------


def test_allowed_hosts_match_exactly_or_as_subdomains() -> None:
    patterns = ["hooks.example.com", "*.example.org"]
    assert host_listed("hooks.example.com", patterns) and host_listed("HOOKS.example.com.", patterns)
    assert host_listed("a.b.example.org", patterns)
    assert not host_listed("example.org", patterns)  # *.domain is its subdomains only
    assert not host_listed("evilexample.org", patterns) and not host_listed("hooks.example.com.evil.net", patterns)
    assert not host_listed("other.example.com", patterns)


def test_config_refuses_a_pattern_that_is_not_a_host() -> None:
    for bad in ("https://x.com", "*.*.com", "x.com:443", "*."):
        with pytest.raises(ValueError):
            WebhooksConfig(allowed_hosts=[bad])


async def _refusal(urls: WebhookURLs, url: str, *, per_request: bool = True) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        await urls.check(url, param=HEADER, per_request=per_request)
    assert caught.value.param == HEADER and caught.value.status == 400
    return caught.value


async def test_a_webhook_url_must_be_https_without_credentials_or_fragment() -> None:
    urls = WebhookURLs(WebhooksConfig(allowed_hosts=["127.0.0.1"], allow_private_addresses=True))
    assert "https://" in (await _refusal(urls, "http://127.0.0.1/hook")).message
    assert "password" in (await _refusal(urls, "https://user:pw@127.0.0.1/hook")).message
    assert "fragment" in (await _refusal(urls, "https://127.0.0.1/hook#x")).message
    assert "valid URL" in (await _refusal(urls, "https://[::1/hook")).message
    await _refusal(urls, "https:///no-host")
    await _refusal(urls, "ftp://127.0.0.1/hook")
    await _refusal(urls, "https://127.0.0.1/" + "x" * 3000)
    assert (
        await urls.check("https://127.0.0.1:8443/hook?a=1", param=HEADER, per_request=True) == "https://127.0.0.1:8443/hook?a=1"
    )


async def test_private_addresses_are_refused_unless_allowed() -> None:
    config = WebhooksConfig(allowed_hosts=["localhost", "127.0.0.1", "169.254.169.254", "10.0.0.1"], allow_http=True)
    urls = WebhookURLs(config)
    for url in ("http://localhost/h", "http://127.0.0.1/h", "http://169.254.169.254/latest", "https://10.0.0.1/h"):
        refused = await _refusal(urls, url)
        assert "non-public" in refused.message and refused.code == "invalid_webhook_url"
    # a key's URL (set by an admin) follows the same address rule
    with pytest.raises(InvalidRequestError) as caught:
        await urls.check_key_url("http://127.0.0.1/h")
    assert caught.value.param == "webhook_url"


async def test_a_per_request_host_must_be_listed() -> None:
    urls = WebhookURLs(WebhooksConfig(allowed_hosts=["*.example.com"], allow_private_addresses=True))
    refused = await _refusal(urls, "https://127.0.0.1/h")
    assert refused.code == "webhook_host_not_allowed" and "'127.0.0.1' is not listed" in refused.message
    nothing = WebhookURLs(WebhooksConfig(allow_private_addresses=True))
    assert "no hosts are listed" in (await _refusal(nothing, "https://127.0.0.1/h")).message
    # an admin's key URL needs no listing
    assert await nothing.check_key_url("https://127.0.0.1/h") == "https://127.0.0.1/h"


async def test_an_unresolvable_host_is_refused() -> None:
    urls = WebhookURLs(WebhooksConfig(allowed_hosts=["*.invalid"]))
    assert "cannot be resolved" in (await _refusal(urls, "https://nowhere.invalid/h")).message


# -- payload -------------------------------------------------------------------


def _job(status: str = "succeeded", result: bytes | None = None) -> JobView:
    return JobView(
        id="job_1", status=status, created_at=1, model="gpt-image-1", endpoint="generations",  # type: ignore[arg-type]
        status_url="http://gw/v1/images/jobs/job_1", reserved_usd="0.100000", cost_usd="0.040000",
        result=result, webhook={"url": "https://h/x", "state": "pending", "attempts": []},
        key_id="key_1", webhook_url="https://h/x",
    )  # fmt: skip


def test_the_payload_carries_no_b64_images() -> None:
    b64 = base64.b64encode(b"\x89PNG" + b"\0" * 5000).decode()
    result = orjson.dumps({"created": 1, "data": [{"b64_json": b64, "revised_prompt": "a cat"}], "usage": {"total_tokens": 9}})
    body = job_payload(_job(result=result), datetime(2026, 12, 1, tzinfo=UTC))
    assert b64.encode() not in body and b'"b64_json":' not in body
    doc = orjson.loads(body)
    assert doc["type"] == "image.job.succeeded" and doc["timestamp"] == "2026-12-01T00:00:00Z"
    data = doc["data"]
    assert data["id"] == "job_1" and data["object"] == "image.job" and data["cost_usd"] == "0.040000"
    assert data["result"] == {"created": 1, "data": [{"revised_prompt": "a cat"}], "usage": {"total_tokens": 9}, "note": B64_NOTE}
    assert "webhook" not in data  # the delivery itself is not part of what it delivers


def test_hosted_urls_stay_in_the_payload() -> None:
    result = orjson.dumps({"created": 1, "data": [{"url": "http://gw/files/a.png?sig=1"}]})
    data = orjson.loads(job_payload(_job(result=result)))["data"]
    assert data["result"] == {"created": 1, "data": [{"url": "http://gw/files/a.png?sig=1"}]}


def test_each_final_state_is_its_own_event() -> None:
    assert orjson.loads(job_payload(_job("failed")))["type"] == "image.job.failed"
    assert orjson.loads(job_payload(_job("cancelled")))["type"] == "image.job.cancelled"
    with pytest.raises(ValueError):
        job_payload(_job("running"))


# -- backoff -------------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    config = WebhooksConfig(initial_backoff_seconds=5, max_backoff_seconds=3600)
    for attempts, base in ((1, 5), (2, 10), (3, 20), (4, 40)):
        delays = [backoff(config, attempts) for _ in range(50)]
        assert all(base <= d <= base * 1.25 for d in delays) and len(set(delays)) > 1
    assert backoff(config, 30) == 3600 and backoff(config, 10_000) == 3600
    assert 120 <= backoff(config, 1, retry_after=120) <= 3600  # a longer Retry-After is honoured
    assert backoff(config, 1, retry_after=1e9) == 3600  # up to the cap
