"""The Vertex provider's token source (imagegate/providers/google/auth.py)
against a stand-in Google token endpoint (tests/standin_google_oauth.py)
that verifies every signed assertion: a service account's key is checked
without ever being quoted, one token is minted and kept until google-auth's
refresh threshold, concurrent callers share one refresh (a cancelled one
included), a refused token is dropped, and a failed exchange is a 502
``upstream_auth_error`` that repeats nothing the endpoint said but its
standard error code."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from standin_google_oauth import CLIENT_EMAIL, CLOUD_PLATFORM, GOOGLE_TOKEN_AUDIENCE, OAuthStandIn, private_key_pem

from imagegate.errors import UpstreamError
from imagegate.providers.google.auth import ServiceAccountTokens, parse_service_account, read_service_account


@pytest.fixture(scope="module")
def endpoint() -> Iterator[OAuthStandIn]:
    with OAuthStandIn() as standin:
        yield standin


@pytest.fixture
def oauth(endpoint: OAuthStandIn) -> OAuthStandIn:
    endpoint.reset()
    return endpoint


def _tokens(oauth: OAuthStandIn, info: dict[str, str] | None = None) -> ServiceAccountTokens:
    return ServiceAccountTokens(info or oauth.account(), [CLOUD_PLATFORM], provider="vx", connect_timeout=2, timeout=5)


# -- the key -------------------------------------------------------------------------------------


def test_a_service_account_key_is_read_and_checked(oauth: OAuthStandIn, tmp_path: Path) -> None:
    info = oauth.account()
    assert parse_service_account(json.dumps(info))["client_email"] == CLIENT_EMAIL
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    assert read_service_account(str(path))["token_uri"] == oauth.token_uri


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda i: "{not json", "not JSON"),
        (lambda i: json.dumps([i]), "not a JSON object"),
        (lambda i: json.dumps({**i, "type": "authorized_user"}), "not a service account"),
        (lambda i: json.dumps({k: v for k, v in i.items() if k != "client_email"}), "has no client_email"),
        (lambda i: json.dumps({**i, "token_uri": "http://oauth2.example.com/token"}), "must be an https URL"),
        (lambda i: json.dumps({**i, "private_key": i["private_key"].replace("A", "B")}), "not an RSA private key"),
        (
            lambda i: json.dumps({**i, "private_key": "-----BEGIN PRIVATE KEY-----\nsecretish\n-----END PRIVATE KEY-----\n"}),
            "not an RSA private key",
        ),
    ],
)
def test_a_bad_key_is_refused_without_quoting_it(oauth: OAuthStandIn, change: object, says: str) -> None:
    text = change(oauth.account())  # type: ignore[operator]
    with pytest.raises(ValueError) as caught:
        parse_service_account(text)
    message = str(caught.value)
    assert says in message
    assert "PRIVATE KEY" not in message and "secretish" not in message and private_key_pem()[40:80] not in message


def test_an_unreadable_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read .*missing.json.*FileNotFoundError"):
        read_service_account(str(tmp_path / "missing.json"))


# -- tokens --------------------------------------------------------------------------------------


async def test_one_token_is_minted_with_a_verified_assertion_and_kept(oauth: OAuthStandIn) -> None:
    tokens = _tokens(oauth)
    first = await tokens.token()
    second = await tokens.token()
    assert first == second and oauth.valid(first)
    assert len(oauth.mints()) == 1 and tokens.minted == 1
    claims = oauth.mints()[0].claims
    assert claims is not None and claims["iss"] == CLIENT_EMAIL and claims["aud"] == GOOGLE_TOKEN_AUDIENCE
    assert claims["scope"] == CLOUD_PLATFORM and claims["exp"] - claims["iat"] == 3600
    assert tokens.current == first
    tokens.close()


async def test_concurrent_callers_share_one_mint(oauth: OAuthStandIn) -> None:
    tokens = _tokens(oauth)
    got = await asyncio.gather(*(tokens.token() for _ in range(20)))
    assert len(set(got)) == 1 and len(oauth.mints()) == 1
    tokens.close()


async def test_a_token_within_the_refresh_threshold_is_minted_again(oauth: OAuthStandIn) -> None:
    oauth.expires_in = 120  # inside google-auth's 3 min 45 s threshold from the start
    tokens = _tokens(oauth)
    first = await tokens.token()
    second = await tokens.token()
    assert first != second and len(oauth.mints()) == 2
    oauth.expires_in = 3600
    third = await tokens.token()  # the fresh one is kept
    assert await tokens.token() == third and len(oauth.mints()) == 3
    tokens.close()


async def test_a_cancelled_caller_leaves_the_shared_refresh_running(oauth: OAuthStandIn) -> None:
    tokens = _tokens(oauth)
    waiting = asyncio.ensure_future(tokens.token())
    await asyncio.sleep(0)  # the refresh has started
    waiting.cancel()
    token = await tokens.token()
    assert oauth.valid(token) and len(oauth.mints()) == 1
    tokens.close()


async def test_an_invalidated_token_is_replaced_once(oauth: OAuthStandIn) -> None:
    tokens = _tokens(oauth)
    old = await tokens.token()
    assert tokens.invalidate(old)
    assert tokens.current is None
    new = await tokens.token()
    assert new != old and len(oauth.mints()) == 2
    assert not tokens.invalidate(old)  # a late refusal of the old token keeps the new one
    assert await tokens.token() == new
    tokens.close()


# -- failures ------------------------------------------------------------------------------------


async def test_a_refused_grant_is_a_502_naming_only_the_oauth_code(oauth: OAuthStandIn) -> None:
    oauth.script.append("invalid_grant")
    tokens = _tokens(oauth)
    with pytest.raises(UpstreamError) as caught:
        await tokens.token()
    err = caught.value
    assert (err.status, err.code) == (502, "upstream_auth_error")
    assert "'vx'" in err.message and "invalid_grant" in err.message
    assertion = oauth.received[0].form["assertion"]
    assert assertion.split(".")[2] not in err.message and "Invalid JWT" not in err.message
    assert tokens.failures == 1 and tokens.current is None
    assert oauth.valid(await tokens.token())  # the next call tries again
    tokens.close()


async def test_an_answer_without_a_token_is_a_502(oauth: OAuthStandIn) -> None:
    oauth.script.append("no_token")
    tokens = _tokens(oauth)
    with pytest.raises(UpstreamError, match="gave no usable token") as caught:
        await tokens.token()
    assert caught.value.code == "upstream_auth_error"
    tokens.close()


async def test_an_assertion_signed_by_another_key_is_refused(oauth: OAuthStandIn) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    tokens = _tokens(oauth, {**oauth.account(), "private_key": pem})
    with pytest.raises(UpstreamError, match="answered invalid_grant"):
        await tokens.token()
    assert oauth.mints() == [] and len(oauth.received) == 1
    tokens.close()


async def test_an_unreachable_token_endpoint_is_a_502(oauth: OAuthStandIn) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens
    tokens = _tokens(oauth, {**oauth.account(), "token_uri": f"http://127.0.0.1:{port}/token"})
    with pytest.raises(UpstreamError, match="could not be reached") as caught:
        await tokens.token()
    assert caught.value.code == "upstream_auth_error"
    tokens.close()
