"""OAuth access tokens for Vertex AI from a service account's JSON key.

The flow is Google's "OAuth 2.0 for Server to Server Applications"
(https://developers.google.com/identity/protocols/oauth2/service-account,
"Preparing to make an authorized API call", HTTP/REST): a JWT signed RS256
with the service account's private key (``iss`` its ``client_email``,
``scope``, ``aud`` the JSON's ``token_uri``, ``iat``, ``exp`` at most an
hour later) is exchanged at ``token_uri`` (``POST``, form
``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT``)
for ``{"access_token", "expires_in", "token_type": "Bearer"}``; an error is
RFC 6749 section 5.2's ``{"error", "error_description"}``.

The JWT and the exchange are google-auth's, not ours
(https://github.com/googleapis/google-auth-library-python,
``google/oauth2/service_account.py`` ``Credentials.refresh`` and
``google/oauth2/_client.py`` ``jwt_grant``): its synchronous credentials
through its ``requests`` transport, run off the event loop with
:func:`asyncio.to_thread`. Its asyncio credentials
(``google.oauth2._service_account_async``, ``google.auth.aio``) are private
or cover no service accounts in the installed versions, so they are not used.

:class:`ServiceAccountTokens` keeps one token per provider:

* it is minted when missing or within google-auth's refresh threshold of
  its expiry (``Credentials.token_state``: 3 min 45 s before), never per call;
* one refresh at a time: concurrent callers share one refresh task (an
  asyncio lock with the refresh shielded from a caller that is cancelled);
* :meth:`ServiceAccountTokens.invalidate` drops a token the API refused, so
  the next caller mints a new one;
* a failed exchange is a 502 ``upstream_auth_error`` naming the provider and
  repeating nothing the token endpoint said except a standard OAuth error
  code (its description may quote the assertion);
* the token endpoint is called with no proxy from the environment, no
  redirects, and a timeout.

The token and the private key are never logged.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.auth.credentials import TokenState
from google.oauth2 import service_account

from imagegate.errors import UpstreamError

log = logging.getLogger(__name__)

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# RFC 6749 section 5.2: the error codes a token endpoint may answer (safe to repeat).
OAUTH_ERRORS = frozenset(
    {"invalid_request", "invalid_client", "invalid_grant", "unauthorized_client", "unsupported_grant_type", "invalid_scope"}
)
_REQUIRED = ("client_email", "private_key", "token_uri")
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
# When a token endpoint states no expires_in, the token is minted again after this long.
_DEFAULT_LIFETIME = datetime.timedelta(minutes=10)
# google-auth's service-account credentials (its functions carry no annotations).
_Credentials: Any = service_account.Credentials


def parse_service_account(text: str) -> dict[str, Any]:
    """A service account's JSON key, checked: a JSON object of ``type``
    ``service_account`` with ``client_email``, ``private_key`` (an RSA key in
    PEM) and ``token_uri`` (https, or http on loopback). ValueError says what
    is wrong and never quotes the key."""
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError("not JSON (expected a service account's JSON key)") from None
    if not isinstance(info, dict):
        raise ValueError("not a JSON object (expected a service account's JSON key)")
    if info.get("type") != "service_account":
        raise ValueError('not a service account\'s key ("type" must be "service_account")')
    missing = [k for k in _REQUIRED if not isinstance(info.get(k), str) or not info[k]]
    if missing:
        raise ValueError(f"the service account's key has no {', '.join(missing)}")
    uri = urlsplit(info["token_uri"])
    if not (uri.scheme == "https" or (uri.scheme == "http" and uri.hostname in _LOOPBACK)) or not uri.hostname:
        raise ValueError("the service account's token_uri must be an https URL")
    try:
        _Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM])
    except (ValueError, TypeError, IndexError):
        raise ValueError("the service account's private_key is not an RSA private key in PEM") from None
    return info


def read_service_account(path: str) -> dict[str, Any]:
    """The service account's key in the file at ``path`` (:func:`parse_service_account`)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path!r} ({type(exc).__name__})") from None
    return parse_service_account(text)


def _utcnow() -> datetime.datetime:
    """Now, as google-auth keeps expiries: naive UTC."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class ServiceAccountTokens:
    """Access tokens for one service account (see the module's doc).

    ``provider`` names the provider in errors; ``connect_timeout`` and
    ``timeout`` bound each call to the token endpoint (seconds)."""

    def __init__(
        self,
        info: Mapping[str, Any],
        scopes: Sequence[str],
        *,
        provider: str,
        connect_timeout: float,
        timeout: float,
    ) -> None:
        self.provider = provider
        self.client_email: str = info["client_email"]
        self._credentials: Any = _Credentials.from_service_account_info(dict(info), scopes=list(scopes))
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy or .netrc from the environment
        self._session.max_redirects = 0  # a token endpoint that redirects is an error
        self._transport = google.auth.transport.requests.Request(self._session)
        self._timeouts = (connect_timeout, timeout)
        self._refresh: asyncio.Future[str] | None = None
        self.minted = 0  # tokens minted (for describe())
        self.failures = 0  # failed exchanges

    # -- what callers use ---------------------------------------------------

    async def token(self) -> str:
        """A token valid beyond google-auth's refresh threshold (minted now
        if there is none), or a 502 ``upstream_auth_error``."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._mint())
            self._refresh.add_done_callback(_retrieve)
        return await asyncio.shield(self._refresh)

    @property
    def current(self) -> str | None:
        """The token in use (for redaction), or None."""
        token = self._credentials.token
        return token if isinstance(token, str) else None

    def invalidate(self, token: str) -> bool:
        """Drop ``token`` if it is still the current one (the API refused it):
        the next :meth:`token` mints a new one. False when it was already replaced."""
        if self._refreshing() or self._credentials.token != token:
            return False
        self._credentials.token = None
        self._credentials.expiry = None
        return True

    def close(self) -> None:
        self._session.close()

    # -- the refresh --------------------------------------------------------

    def _refreshing(self) -> bool:
        return self._refresh is not None and not self._refresh.done()

    def _fresh(self) -> str | None:
        """The current token when no refresh is running and google-auth
        counts it fresh (not within its threshold of expiry)."""
        if self._refreshing() or self._credentials.token_state != TokenState.FRESH:
            return None
        return self.current

    async def _mint(self) -> str:
        try:
            await asyncio.to_thread(self._refresh_sync)
        except (google.auth.exceptions.GoogleAuthError, requests.RequestException, OSError, ValueError) as exc:
            self.failures += 1
            raise self._failure(exc) from None
        token = self.current
        if token is None:
            raise self._failure(None)
        self.minted += 1
        return token

    def _refresh_sync(self) -> None:
        """In a worker thread: google-auth signs the JWT and exchanges it."""
        self._credentials.refresh(self._request)
        if self._credentials.expiry is None:
            self._credentials.expiry = _utcnow() + _DEFAULT_LIFETIME

    def _request(self, *args: Any, **kwargs: Any) -> Any:
        """google-auth's requests transport, with this provider's timeouts."""
        kwargs["timeout"] = self._timeouts
        return self._transport(*args, **kwargs)

    def _failure(self, exc: Exception | None) -> UpstreamError:
        """The client's error for a failed exchange: the provider, and at most
        a standard OAuth error code; the log gets the exception's kind only."""
        code = _oauth_error(exc)
        if code is not None:
            why = f"its token endpoint answered {code}"
        elif isinstance(exc, google.auth.exceptions.TransportError | requests.RequestException | OSError):
            why = "its token endpoint could not be reached"
        else:
            why = "its token endpoint gave no usable token"
        log.warning(
            "provider %s: minting an access token for %s failed: %s (%s)",
            self.provider,
            self.client_email,
            why,
            type(exc).__name__ if exc is not None else "no token",
        )
        return UpstreamError(
            f"The upstream '{self.provider}' could not be authorised: {why} when asked for an OAuth "
            "access token; check the service account (credentials_file or credentials_json) in the gateway's configuration.",
            code="upstream_auth_error",
        )


def _oauth_error(exc: Exception | None) -> str | None:
    """The RFC 6749 error code of a token endpoint's refusal, when it is a standard one."""
    if not isinstance(exc, google.auth.exceptions.RefreshError):
        return None
    for arg in exc.args[1:]:
        if isinstance(arg, dict) and arg.get("error") in OAUTH_ERRORS:
            return str(arg["error"])
    return None


def _retrieve(future: asyncio.Future[str]) -> None:
    """Read a refresh's outcome, so a failure that every waiter abandoned
    is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()


__all__ = ["CLOUD_PLATFORM", "ServiceAccountTokens", "parse_service_account", "read_service_account"]
