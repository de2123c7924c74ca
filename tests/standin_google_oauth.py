"""A stand-in Google OAuth 2.0 token endpoint on loopback, for service accounts.

Protocol, as Google documents it:

* https://developers.google.com/identity/protocols/oauth2/service-account,
  "Preparing to make an authorized API call" (HTTP/REST): the client sends
  ``POST /token`` (``https://oauth2.googleapis.com/token``), form-encoded
  ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT``.
  The JWT's header is ``{"alg": "RS256", "typ": "JWT"}`` (google-auth adds
  ``kid``, the key's id); its claim set has ``iss`` (the service account's
  email), ``scope`` (space-delimited), ``aud`` ("When making an access token
  request this value is always https://oauth2.googleapis.com/token", even
  when the JSON's ``token_uri`` names another endpoint, such as this
  stand-in: google-auth sends that constant), ``exp`` ("a maximum of 1 hour after the issued time") and
  ``iat``; it is signed "using SHA256withRSA (also known as RSASSA-PKCS1-V1_5-SIGN
  with the SHA-256 hash function)" with the private key from the service
  account's JSON. The answer is ``{"access_token", "scope", "token_type":
  "Bearer", "expires_in"}``; an error (the page's "Error codes": invalid_grant
  for an invalid signature or a bad iat/exp, unauthorized_client, ...) is
  RFC 6749 section 5.2's ``{"error", "error_description"}`` with HTTP 400.
* google-auth (https://github.com/googleapis/google-auth-library-python,
  ``google/oauth2/service_account.py`` ``_make_authorization_grant_assertion``,
  ``google/oauth2/_client.py`` ``jwt_grant``): what the client sends,
  including the ``x-goog-api-client`` metrics header, and how it reads
  ``expires_in``.

The stand-in VERIFIES each assertion with the throwaway service account's
public key (:func:`service_account`, one RSA key per test session): the
signature, ``alg``, ``kid``, ``iss``, ``aud`` (Google's token endpoint), that ``scope`` holds
cloud-platform, and ``iat``/``exp`` (within a minute of now, at most an hour
apart); a failure is a 400 ``invalid_grant`` as Google answers. It records
each request, counts mints, remembers every token it issued with its
expiry (:meth:`OAuthStandIn.valid`: what a Vertex stand-in accepts) and
answers ``expires_in`` seconds (settable). A scripted fault answers the
next request: ``"invalid_grant"`` (400, a description that quotes the
assertion it refused, as a careless endpoint might), ``"server_error"``
(500, RFC 6749's ``server_error``: google-auth retries it), ``"no_token"``
(200 without ``access_token``). :meth:`OAuthStandIn.revoke` withdraws a
token before its expiry (a key deleted in the console).
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from standin_http import Handler, StandInServer

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
CLIENT_EMAIL = "imagegate-test@standin-project.iam.gserviceaccount.com"
KEY_ID = "0123456789abcdef0123456789abcdef01234567"


@functools.cache
def _private_key() -> rsa.RSAPrivateKey:
    """The throwaway key of this test session's service account."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem() -> str:
    return (
        _private_key()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )


def service_account(token_uri: str) -> dict[str, str]:
    """A service account's JSON key, as the Cloud console downloads it, whose
    ``token_uri`` is ``token_uri`` (a stand-in's)."""
    return {
        "type": "service_account",
        "project_id": "standin-project",
        "private_key_id": KEY_ID,
        "private_key": private_key_pem(),
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/imagegate-test%40standin-project.iam.gserviceaccount.com",
        "universe_domain": "googleapis.com",
    }


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class GrantError(Exception):
    """An assertion the stand-in refuses (400 invalid_grant)."""


@dataclass
class TokenRequest:
    """One request to the token endpoint."""

    path: str
    headers: dict[str, str]
    form: dict[str, str]
    claims: dict[str, Any] | None  # the verified JWT's claims, None when refused
    issued: str | None  # the token answered


class _OAuthHandler(Handler):
    server_ref: OAuthStandIn

    def do_POST(self) -> None:
        standin = self.server_ref
        body = self.read_body()
        headers = self.header_map()
        form = {k: v[0] for k, v in parse_qs(body.decode("ascii", "replace"), keep_blank_values=True).items()}
        rec = TokenRequest(self.path, headers, form, None, None)
        fault = standin.record(rec)
        if self.path != "/token":
            self.send_json(404, {"error": "not_found"})
            return
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            self.send_json(400, {"error": "invalid_request", "error_description": "expected a form"})
            return
        if form.get("grant_type") != JWT_BEARER or set(form) != {"grant_type", "assertion"}:
            self.send_json(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."})
            return
        assertion = form["assertion"]
        if fault == "invalid_grant":
            self.send_json(400, {"error": "invalid_grant", "error_description": f"Invalid JWT Signature: {assertion}"})
            return
        if fault == "server_error":
            self.send_json(500, {"error": "server_error", "error_description": f"backend error for {assertion}"})
            return
        try:
            rec.claims = standin.verify(assertion)
        except GrantError as exc:
            self.send_json(400, {"error": "invalid_grant", "error_description": str(exc)})
            return
        if fault == "no_token":
            self.send_json(200, {"token_type": "Bearer", "expires_in": standin.expires_in})
            return
        rec.issued = standin.issue()
        answer = {
            "access_token": rec.issued,
            "scope": rec.claims["scope"],
            "token_type": "Bearer",
            "expires_in": standin.expires_in,
        }
        self.send_json(200, answer, headers={"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate"})


class OAuthStandIn(StandInServer[TokenRequest, str]):
    """The token endpoint at ``{origin}/token`` (``token_uri``)."""

    def __init__(self) -> None:
        handler = type("OAuthHandler", (_OAuthHandler,), {})
        super().__init__(handler, "")
        handler.server_ref = self
        self.token_uri = f"{self.origin}/token"
        self.expires_in = 3600
        self._issued: dict[str, float] = {}  # token -> when it expires (time.time())
        self._tokens_lock = threading.Lock()

    def account(self) -> dict[str, str]:
        """The service account's JSON key that points here."""
        return service_account(self.token_uri)

    def reset(self) -> None:
        """Forget requests and faults (tokens already issued stay valid)."""
        super().reset()
        self.expires_in = 3600

    # -- tokens -------------------------------------------------------------

    def issue(self) -> str:
        token = f"ya29.standin-{secrets.token_urlsafe(24)}"
        with self._tokens_lock:
            self._issued[token] = time.time() + self.expires_in
        return token

    def valid(self, token: str) -> bool:
        """Whether ``token`` was issued here and has not expired or been revoked."""
        with self._tokens_lock:
            return self._issued.get(token, 0.0) > time.time()

    def revoke(self, token: str) -> None:
        with self._tokens_lock:
            self._issued.pop(token, None)

    def mints(self) -> list[TokenRequest]:
        """The requests that got a token."""
        return [r for r in self.received if r.issued is not None]

    # -- the assertion ------------------------------------------------------

    def verify(self, assertion: str) -> dict[str, Any]:
        """The claims of a valid assertion; GrantError says why one is not."""
        parts = assertion.split(".")
        if len(parts) != 3:
            raise GrantError("Invalid JWT: not three segments.")
        try:
            header = json.loads(_b64url(parts[0]))
            claims = json.loads(_b64url(parts[1]))
            signature = _b64url(parts[2])
        except ValueError:
            raise GrantError("Invalid JWT: undecodable segments.") from None
        if header.get("alg") != "RS256" or header.get("typ", "JWT") != "JWT" or header.get("kid") != KEY_ID:
            raise GrantError(f"Invalid JWT header: {header}.")
        try:
            _private_key().public_key().verify(signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise GrantError("Invalid JWT Signature.") from None
        now = time.time()
        if claims.get("iss") != CLIENT_EMAIL:
            raise GrantError("Invalid JWT: iss is not the service account.")
        if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
            raise GrantError("Invalid JWT: aud is not Google's token endpoint.")
        if CLOUD_PLATFORM not in str(claims.get("scope", "")).split(" "):
            raise GrantError("Invalid JWT: scope lacks cloud-platform.")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int):
            raise GrantError("Invalid JWT: iat and exp must be integers.")
        if abs(iat - now) > 60 or exp <= now or exp - iat > 3600:
            raise GrantError("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.")
        return dict(claims)
