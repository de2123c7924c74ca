"""Virtual keys belong to teams and keys: only their owners and admin keys may
spend them, and to anyone else one answers exactly like a name that does not
exist. Through the real server, against an OpenAI stand-in on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from cryptography.fernet import Fernet
from standin_openai import OpenAIStandIn

from support import SIGNING_KEY, Running, run_server

MASTER = "master-key-for-the-tests-0123456789"
STATIC = "static-key-for-the-tests-0123456789"
VK_SECRET = "sk-team-b-upstream-secret"


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def gw(upstream: OpenAIStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    cfg = {
        "auth": {"master_key": MASTER, "api_keys": [STATIC], "encryption_key": Fernet.generate_key().decode()},
        "storage": {"signing_key": SIGNING_KEY},
        "providers": {"up": {"type": "openai", "base_url": upstream.base_url, "api_key": "sk-from-config"}},
        "models": {"gpt-image-1": [{"provider": "up"}]},
    }
    with run_server(cfg, tmp_path_factory.mktemp("vkeys")) as running:
        yield running


def admin(gw: Running, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gw.base_url + path, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30, **kwargs)


def new_key(gw: Running, **body: Any) -> dict[str, Any]:
    r = admin(gw, "POST", "/admin/keys", json={"name": "vk-test", **body})
    assert r.status_code == 201, r.text
    return r.json()


def put_vkey(gw: Running, name: str, **owners: Any) -> httpx.Response:
    return admin(gw, "PUT", f"/admin/virtual-keys/{name}", json={"provider": "up", "secret": VK_SECRET, **owners})


def generate(gw: Running, secret: str, virtual_key: str) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/images/generations", json={"model": "gpt-image-1", "prompt": "x"}, timeout=30,
                      headers={"Authorization": f"Bearer {secret}", "x-portkey-virtual-key": virtual_key})  # fmt: skip


def not_found_shape(r: httpx.Response, name: str) -> dict[str, Any]:
    """The answer with the (caller-supplied) name taken out: what is left must not tell the cases apart."""
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    return {**error, "message": error["message"].replace(name, "NAME"), "status": r.status_code}


def test_only_owners_and_admins_may_spend_a_virtual_key(gw: Running, upstream: OpenAIStandIn) -> None:
    alice = new_key(gw, team="team-a")
    bob = new_key(gw, team="team-b")
    carol = new_key(gw)  # no team: granted by key id below
    created = put_vkey(gw, "b-openai", teams=["team-b"]).json()
    assert created == {"name": "b-openai", "provider": "up", "teams": ["team-b"], "keys": []}
    upstream.received.clear()

    # another team's key, and a static key, get exactly what a name that does not exist gets
    theirs = generate(gw, alice["key"], "b-openai")
    unknown = generate(gw, alice["key"], "no-such-key")
    assert not_found_shape(theirs, "b-openai") == not_found_shape(unknown, "no-such-key")
    assert theirs.json()["error"]["code"] == "virtual_key_not_found"
    assert theirs.json()["error"]["param"] == "x-portkey-virtual-key"
    assert not_found_shape(generate(gw, STATIC, "b-openai"), "b-openai") == not_found_shape(unknown, "no-such-key")
    assert not_found_shape(generate(gw, carol["key"], "b-openai"), "b-openai") == not_found_shape(unknown, "no-such-key")
    assert upstream.received == []  # the credential was never sent anywhere

    # the SDK sees the same 404
    client = gw.sdk(api_key=alice["key"], default_headers={"x-portkey-virtual-key": "b-openai"})
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="gpt-image-1", prompt="x")
    assert caught.value.code == "virtual_key_not_found"

    # the owning team's keys and admin keys may
    assert generate(gw, bob["key"], "b-openai").status_code == 200
    assert upstream.received[-1].headers["authorization"] == f"Bearer {VK_SECRET}"
    assert generate(gw, MASTER, "b-openai").status_code == 200

    # grant by key (id or shown prefix), then revoke the team
    granted = admin(gw, "PATCH", "/admin/virtual-keys/b-openai", json={"keys": [carol["prefix"]], "change": "grant"})
    assert granted.json()["keys"] == [carol["id"]]
    assert generate(gw, carol["key"], "b-openai").status_code == 200
    revoked = admin(gw, "PATCH", "/admin/virtual-keys/b-openai", json={"teams": ["team-b"], "change": "revoke"})
    assert revoked.json() == {"name": "b-openai", "provider": "up", "teams": [], "keys": [carol["id"]]}
    assert generate(gw, bob["key"], "b-openai").status_code == 404
    assert generate(gw, carol["key"], "b-openai").status_code == 200


def test_a_virtual_key_without_owners_is_for_admins_only(gw: Running) -> None:
    assert put_vkey(gw, "ownerless").json()["teams"] == []
    anyone = new_key(gw, team="team-z")
    assert generate(gw, anyone["key"], "ownerless").status_code == 404
    assert generate(gw, STATIC, "ownerless").status_code == 404
    admin_key = new_key(gw, admin=True)
    assert generate(gw, admin_key["key"], "ownerless").status_code == 200


def test_admin_api_sets_and_shows_owners(gw: Running) -> None:
    dave = new_key(gw)
    created = put_vkey(gw, "shown", teams=["t1", "t2"], keys=[dave["id"]])
    assert created.status_code == 200
    expected = {"name": "shown", "provider": "up", "teams": ["t1", "t2"], "keys": [dave["id"]]}
    assert admin(gw, "GET", "/admin/virtual-keys/shown").json() == expected
    assert expected in admin(gw, "GET", "/admin/virtual-keys").json()["data"]
    # rotating the secret keeps the owners; giving owners replaces them
    assert put_vkey(gw, "shown").json() == expected
    assert put_vkey(gw, "shown", teams=["t3"]).json()["teams"] == ["t3"]
    assert admin(gw, "PATCH", "/admin/virtual-keys/shown", json={"keys": []}).json()["keys"] == []
    # a key that does not exist cannot be an owner (and no name is stored half-done)
    bad = put_vkey(gw, "shown", keys=["key_does_not_exist"])
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "key_not_found" and bad.json()["error"]["param"] == "keys"
    assert admin(gw, "GET", "/admin/virtual-keys/shown").json()["keys"] == []
    assert admin(gw, "PATCH", "/admin/virtual-keys/nope", json={"teams": ["t"]}).status_code == 404
    assert admin(gw, "GET", "/admin/virtual-keys/nope").status_code == 404
    # only admins manage them
    plain = httpx.get(f"{gw.base_url}/admin/virtual-keys", headers={"Authorization": f"Bearer {dave['key']}"}, timeout=30)
    assert plain.status_code == 403
    assert VK_SECRET not in admin(gw, "GET", "/admin/virtual-keys").text
