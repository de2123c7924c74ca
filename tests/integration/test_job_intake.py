"""Job submissions accepted in batches (imagegate/gateway/jobs/intake.py),
through the real server on SQLite and PostgreSQL: a burst of concurrent
``Prefer: respond-async`` submissions gets exactly the answers one
transaction per job would give, and the money held is exactly that of the
jobs accepted. The workers run nothing (``jobs.workers: 0``): every job
accepted stays queued to be looked at, then is cancelled."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_jobs import ASYNC, LOW
from test_jobs_crash import SlowOpenAI, admin, config, money, new_key

from imagegate.gateway.jobs.intake import Intake, Submission
from imagegate.gateway.service import REPLAY_HEADER
from support import Running, run_server

Send = tuple[str, dict[str, Any], dict[str, str]]  # a key's secret, the body, more headers
NOTHING = (Decimal(0), Decimal(0))  # (spent, reserved)
Batches = list[list[tuple[str, str | None]]]


@pytest.fixture(scope="module")
def upstream() -> Iterator[SlowOpenAI]:
    with SlowOpenAI() as standin:
        yield standin


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(request: pytest.FixtureRequest, upstream: SlowOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    cfg = config(upstream.base_url)
    cfg["jobs"] = {"workers": 0}
    if request.param == "postgresql":
        cfg["database"] = {"url": request.getfixturevalue("postgres_url")}
    with run_server(cfg, tmp_path_factory.mktemp(request.param)) as running:
        yield running
    assert upstream.received == []  # nothing ran


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> Batches:
    """The caller (scope) and Idempotency-Key of each submission of each
    transaction the intake writes: a spy, since a burst must really have been
    batched for a test to prove anything about batches."""
    seen: Batches = []
    write = Intake._transaction

    async def spy(self: Intake, batch: list[Submission]) -> tuple[list[Exception | None], list[Submission]]:
        seen.append([(s.row["scope"], s.row["idempotency_key"]) for s in batch])
        return await write(self, batch)

    monkeypatch.setattr(Intake, "_transaction", spy)
    return seen


def burst(gw: Running, sends: list[Send]) -> list[httpx.Response]:
    """Every one of ``sends`` at once (a connection each)."""

    async def go() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(sends))
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=30, limits=limits) as http:
            return await asyncio.gather(*(
                http.post("/v1/images/generations", json=body, headers={"Authorization": f"Bearer {secret}", **ASYNC, **more})
                for secret, body, more in sends
            ))  # fmt: skip

    return asyncio.run(go())


def body(prompt: str) -> dict[str, Any]:
    return {**LOW, "prompt": prompt}


def worst_case(gw: Running) -> Decimal:
    """What one job of ``body("p000")``'s shape reserves (every prompt here is that long)."""
    probe = new_key(gw.base_url)
    with httpx.Client(base_url=gw.base_url, headers={"Authorization": f"Bearer {probe['key']}"}, timeout=30) as http:
        job = http.post("/v1/images/generations", json=body("p000"), headers=ASYNC).json()
        assert http.delete(f"/v1/images/jobs/{job['id']}").json()["status"] == "cancelled"
    assert money(gw.base_url, probe["id"]) == NOTHING
    wanted = Decimal(job["reserved_usd"])
    assert wanted > 0
    return wanted


def create_key(gw: Running, **fields: Any) -> dict[str, Any]:
    r = admin(gw.base_url, "POST", "/admin/keys", json={"name": "intake", **fields})
    assert r.status_code == 201, r.text
    key: dict[str, Any] = r.json()
    return key


def team_money(gw: Running, name: str) -> tuple[Decimal, Decimal]:
    (team,) = [t for t in admin(gw.base_url, "GET", "/admin/teams").json()["data"] if t["name"] == name]
    return Decimal(team["spent_usd"]), Decimal(team["reserved_usd"])


def held_by(gw: Running, key_id: str) -> list[dict[str, Any]]:
    """The key's reservation rows (one per accepted job, owned by it: ``job:<id>``)."""
    rows: list[dict[str, Any]] = admin(gw.base_url, "GET", "/admin/reservations", params={"key": key_id}).json()["data"]
    return rows


def listed(gw: Running, secret: str) -> list[str]:
    with httpx.Client(base_url=gw.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30) as http:
        page = http.get("/v1/images/jobs", params={"limit": 100}).json()
    assert page["has_more"] is False
    return sorted(job["id"] for job in page["data"])


def cancel_all(gw: Running, secret: str, ids: list[str]) -> None:
    """The session's PostgreSQL is shared: no queued job is left behind."""
    with httpx.Client(base_url=gw.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30) as http:
        for job_id in ids:
            r = http.delete(f"/v1/images/jobs/{job_id}")
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text


def check_accepted(gw: Running, key: dict[str, Any], jobs: list[dict[str, Any]], wanted: Decimal) -> None:
    """The key holds exactly its accepted jobs' worst cases, one reservation each, and lists exactly them."""
    ids = sorted(job["id"] for job in jobs)
    assert all(Decimal(job["reserved_usd"]) == wanted for job in jobs)
    assert money(gw.base_url, key["id"]) == (Decimal(0), wanted * len(jobs))
    assert sorted(row["owner"] for row in held_by(gw, key["id"])) == sorted(f"job:{i}" for i in ids)
    assert listed(gw, key["key"]) == ids


def test_a_burst_of_three_keys_one_over_its_budget(gw: Running, batches: Batches) -> None:
    wanted = worst_case(gw)
    fits, each = 4, 16
    a = new_key(gw.base_url)
    r = admin(gw.base_url, "PATCH", f"/admin/keys/{a['id']}", json={"budget_usd": float(wanted * fits + wanted / 2)})
    assert r.status_code == 200, r.text
    b, c = new_key(gw.base_url), new_key(gw.base_url)  # $100 each: ample
    keys = [a, b, c]
    sends: list[Send] = [(key["key"], body(f"p{n:03d}"), {}) for n in range(each) for key in keys]  # a, b, c, a, b, c, ...
    answers = burst(gw, sends)

    by_key = {key["id"]: [r for (secret, _, _), r in zip(sends, answers, strict=True) if secret == key["key"]] for key in keys}
    got_a = by_key[a["id"]]
    assert sorted(r.status_code for r in got_a) == [202] * fits + [429] * (each - fits), [r.text for r in got_a]
    for r in got_a:  # each refused as it would be alone: for its own worst case, not the sum of the batch's
        if r.status_code == 429:
            error = r.json()["error"]
            assert (
                error["code"] == "insufficient_quota" and f"could cost up to ${wanted}, more than this key's" in error["message"]
            ), error
    for key in (b, c):
        assert [r.status_code for r in by_key[key["id"]]] == [202] * each, [r.text for r in by_key[key["id"]]]
    assert max(len(batch) for batch in batches) > 1, batches  # accepted in batches, not one by one
    assert any(Counter(scope for scope, _ in batch)[f"key:{a['id']}"] > 1 for batch in batches), batches  # several of a's

    accepted = {key["id"]: [r.json() for r in by_key[key["id"]] if r.status_code == 202] for key in keys}
    for key in keys:
        check_accepted(gw, key, accepted[key["id"]], wanted)
    for key in keys:
        cancel_all(gw, key["key"], [job["id"] for job in accepted[key["id"]]])
        assert money(gw.base_url, key["id"]) == NOTHING and held_by(gw, key["id"]) == []


def test_a_team_budget_refuses_the_rest_and_leaves_nothing_on_its_keys(gw: Running, batches: Batches) -> None:
    wanted = worst_case(gw)
    fits, each = 5, 12
    team = f"intake-{uuid.uuid4().hex[:8]}"
    r = admin(gw.base_url, "PUT", f"/admin/teams/{team}", json={"budget_usd": float(wanted * fits + wanted / 2)})
    assert r.status_code == 200, r.text
    members = [create_key(gw, team=team) for _ in range(2)]  # no budget of their own: the team's
    other = new_key(gw.base_url)  # in no team, $100
    keys = [*members, other]
    sends: list[Send] = [(key["key"], body(f"t{n:03d}"), {}) for n in range(each) for key in keys]
    answers = burst(gw, sends)

    by_key = {key["id"]: [r for (secret, _, _), r in zip(sends, answers, strict=True) if secret == key["key"]] for key in keys}
    team_answers = [r for key in members for r in by_key[key["id"]]]
    assert sorted(r.status_code for r in team_answers) == [202] * fits + [429] * (2 * each - fits), [r.text for r in team_answers]
    for r in team_answers:
        if r.status_code == 429:
            error = r.json()["error"]
            assert error["code"] == "insufficient_quota" and f"up to ${wanted}, more than team '{team}'" in error["message"], (
                error
            )
    assert [r.status_code for r in by_key[other["id"]]] == [202] * each
    assert max(len(batch) for batch in batches) > 1, batches

    accepted = {key["id"]: [r.json() for r in by_key[key["id"]] if r.status_code == 202] for key in keys}
    for key in keys:  # a refused job gave the key's share back: each member holds only its accepted jobs
        check_accepted(gw, key, accepted[key["id"]], wanted)
    assert team_money(gw, team) == (Decimal(0), wanted * fits)
    assert all(row["team"] == team for key in members for row in held_by(gw, key["id"]))
    for key in keys:
        cancel_all(gw, key["key"], [job["id"] for job in accepted[key["id"]]])
        assert money(gw.base_url, key["id"]) == NOTHING
    assert team_money(gw, team) == NOTHING


def test_idempotency_keys_inside_a_burst(gw: Running, batches: Batches) -> None:
    wanted = worst_case(gw)
    key = new_key(gw.base_url)
    secret, tag = key["key"], uuid.uuid4().hex[:8]
    same = {"Idempotency-Key": f"same-{tag}"}
    clash = {"Idempotency-Key": f"clash-{tag}"}
    sends: list[Send] = []
    for n in range(30):
        if n in (4, 9, 14, 19, 24):  # the same key, the same body
            sends.append((secret, body("s000"), same))
        elif n in (7, 17, 27):  # the same key, three bodies
            sends.append((secret, body(f"c{n:03d}"), clash))
        elif n % 2:
            sends.append((secret, body(f"u{n:03d}"), {"Idempotency-Key": f"own-{tag}-{n}"}))
        else:
            sends.append((secret, body(f"n{n:03d}"), {}))
    answers = burst(gw, sends)
    met = [Counter(k for _, k in batch if k in (same["Idempotency-Key"], clash["Idempotency-Key"])) for batch in batches]
    assert any(n > 1 for m in met for n in m.values()), batches  # a duplicate inside a transaction: it was rolled back

    def of(headers: dict[str, str]) -> list[httpx.Response]:
        return [r for (_, _, more), r in zip(sends, answers, strict=True) if more == headers]

    repeated = of(same)
    assert len(repeated) == 5
    assert sorted(r.status_code for r in repeated) == [200] * 4 + [202], [r.text for r in repeated]
    assert len({r.json()["id"] for r in repeated}) == 1  # one job for the five
    for r in repeated:
        assert (r.headers.get(REPLAY_HEADER) == "true") is (r.status_code == 200)

    clashing = of(clash)
    assert sorted(r.status_code for r in clashing) == [202, 409, 409], [r.text for r in clashing]
    with httpx.Client(base_url=gw.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30) as http:
        alone = http.post("/v1/images/generations", json=body("c999"), headers={**ASYNC, **clash})  # not in a burst
    assert alone.status_code == 409 and alone.json()["error"]["code"] == "idempotency_key_reused", alone.text
    for r in clashing:
        if r.status_code == 409:
            assert r.json() == alone.json()  # the answer one submission alone gets

    others = [r for (_, _, more), r in zip(sends, answers, strict=True) if more not in (same, clash)]
    assert [r.status_code for r in others] == [202] * len(others), [r.text for r in others]
    jobs = {r.json()["id"]: r.json() for r in answers if r.status_code in (200, 202)}
    assert len(jobs) == len(others) + 2  # every other submission its own job; one for the five, one for the three
    check_accepted(gw, key, list(jobs.values()), wanted)  # the replays and the conflicts hold nothing
    cancel_all(gw, secret, list(jobs))
    assert money(gw.base_url, key["id"]) == NOTHING
    # One usage row per job (each ended cancelled); a replay records nothing, whether
    # it lost the race inside a batch or came later, and neither does a reused key.
    usage = admin(gw.base_url, "GET", "/admin/usage", params={"key": key["id"], "group_by": "key"}).json()["data"]
    assert [row["requests"] for row in usage] == [len(jobs)], usage


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_budget_refusal_in_a_batch_does_not_leave_a_cap_refusal_behind(
    database: str, upstream: SlowOpenAI, tmp_path: Path, request: pytest.FixtureRequest, batches: Batches
) -> None:
    # Cap 2 queued jobs; two dear jobs the budget refuses, then a cheap one it
    # fits. One by one the cheap one is accepted (the dear ones never counted
    # against the cap); a batch must answer the same, though its caps' check
    # counted the dear ones before their budget said no.
    cfg = config(upstream.base_url)
    cfg["jobs"] = {"workers": 0, "max_queued_per_key": 2}
    if database == "postgresql":
        cfg["database"] = {"url": request.getfixturevalue("postgres_url")}
    with run_server(cfg, tmp_path) as gw:
        one = worst_case(gw)
        key = create_key(gw, budget_usd=float(one * 3 / 2))
        filler = [(new_key(gw.base_url)["key"], body(f"f{n:03d}"), {}) for n in range(2) for _ in range(12)]
        mine = [(key["key"], {**body("d001"), "n": 4}, {}), (key["key"], {**body("d002"), "n": 4}, {}),
                (key["key"], body("c003"), {})]  # fmt: skip
        answers = burst(gw, [*filler[:20], *mine, *filler[20:]])[20:23]
        scope = f"key:{key['id']}"
        assert any(sum(1 for s, _ in batch if s == scope) == 3 for batch in batches), batches  # they met in one
        assert [_code(r) for r in answers] == [(429, "insufficient_quota"), (429, "insufficient_quota"), (202, None)]
        assert money(gw.base_url, key["id"]) == (0, Decimal(answers[2].json()["reserved_usd"]))


def _code(r: httpx.Response) -> tuple[int, str | None]:
    return r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else None


def test_keys_of_shared_teams_with_sync_requests_alongside_never_deadlock(
    postgres_url: str, upstream: SlowOpenAI, tmp_path: Path
) -> None:
    # A batch reserves for several keys and their teams in one transaction,
    # beside sync reservations and settlements (a key, then its team): it must
    # take the rows in the same order (keys, then teams, sorted) or
    # PostgreSQL's deadlock detector fails whole batches (a 503 each).
    cfg = {**config(upstream.base_url), "database": {"url": postgres_url},
           "providers": {"demo": {"type": "test-pattern"}}, "models": {"test-pattern": [{"provider": "demo"}]},
           "pricing": {"test-pattern": {"per_image": 0.01}},
           "jobs": {"workers": 0, "max_queued_per_key": 100000}}  # fmt: skip
    with run_server(cfg, tmp_path) as gw:
        tag = uuid.uuid4().hex[:6]
        for team in ("t1", "t2"):
            assert admin(gw.base_url, "PUT", f"/admin/teams/{tag}{team}", json={"budget_usd": 1000}).status_code == 200
        keys = [create_key(gw, team=f"{tag}t{1 + n % 2}", budget_usd=500) for n in range(8)]
        job = {"model": "test-pattern", "prompt": "x", "size": "64x64"}

        async def storm() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=400)
            async with httpx.AsyncClient(base_url=gw.base_url, timeout=60, limits=limits) as http:
                sends = []
                for _ in range(15):
                    for key in keys:
                        auth = {"Authorization": f"Bearer {key['key']}"}
                        sends.append(http.post("/v1/images/generations", json=job, headers={**auth, **ASYNC}))
                        sends.append(http.post("/v1/images/generations", json=job, headers=auth))
                return await asyncio.gather(*sends)

        answers = [r for _ in range(3) for r in asyncio.run(storm())]
        assert Counter(r.status_code for r in answers) == {202: 360, 200: 360}, {r.text[:200] for r in answers}
        for key in keys:  # 45 sync images charged, 45 queued jobs holding their reservations
            assert money(gw.base_url, key["id"]) == (Decimal("0.45"), Decimal("0.45")), key["id"]
