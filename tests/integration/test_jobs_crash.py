"""Jobs across crashes (issue 16, Reliability): a real server process is
killed with SIGKILL while 50 jobs are queued or running, then restarted
(SQLite), or left to a second replica (PostgreSQL). Every accepted job ends
succeeded, failed or cancelled; none is lost; no prompt reaches the stand-in
upstream twice; the key's spend is the sum of its jobs' costs and nothing
stays reserved.

(A synchronous request's reservation left by a killed process is released
at the restart: tests/integration/test_money_faults.py,
test_kill_9_mid_request_then_restart_gives_the_budget_back.)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from standin_openai import Fault, OpenAIStandIn

from support import SIGNING_KEY, serve_process

MASTER = "master-key-for-the-job-crash-tests-01"
JOBS = 50
FINAL = {"succeeded", "failed", "cancelled"}


class SlowOpenAI(OpenAIStandIn):
    """OpenAI's images API, each answer after ``delay`` seconds (unless the caller hangs up first)."""

    delay = 1.0

    def answer(self, h: Any, rec: Any, fault: Fault | None) -> None:
        super().answer(h, rec, fault or Fault("slow", seconds=self.delay))

    def prompts(self) -> Counter[str]:
        return Counter(r.json["prompt"] for r in list(self.received) if r.json is not None)


def config(upstream: str, **extra: Any) -> dict[str, Any]:
    return {
        "auth": {"master_key": MASTER},
        "storage": {"signing_key": SIGNING_KEY, "sweep_interval_seconds": 0.5},
        "providers": {"up": {"type": "openai", "base_url": upstream, "api_key": "sk-upstream-secret"}},
        "models": {"gpt-image-1": {"deployments": [{"provider": "up"}], "routing": {"max_attempts": 1}}},
        "jobs": {"workers": 8, "lease_seconds": 2, "poll_seconds": 0.2, "drain_seconds": 0},
        **extra,
    }


def admin(base: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, base + path, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30, **kwargs)


def new_key(base: str) -> dict[str, Any]:
    r = admin(base, "POST", "/admin/keys", json={"name": "jobs", "budget_usd": 100})
    assert r.status_code == 201, r.text
    return r.json()


def money(base: str, key_id: str) -> tuple[Decimal, Decimal]:
    view = admin(base, "GET", f"/admin/keys/{key_id}").json()
    return Decimal(view["spent_usd"]), Decimal(view["reserved_usd"])


def submit_all(bases: list[str], secret: str) -> list[str]:
    """50 jobs with distinct prompts, spread over ``bases``; their ids."""

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as http:
            headers = {"Authorization": f"Bearer {secret}", "Prefer": "respond-async"}
            return await asyncio.gather(*(
                http.post(f"{bases[i % len(bases)]}/v1/images/generations", headers=headers,
                          json={"model": "gpt-image-1", "prompt": f"job {i}", "size": "1024x1024", "quality": "low"})
                for i in range(JOBS)
            ))  # fmt: skip

    answers = asyncio.run(run())
    assert [r.status_code for r in answers] == [202] * JOBS, [r.text for r in answers if r.status_code != 202][:1]
    return [r.json()["id"] for r in answers]


def jobs_of(base: str, secret: str, ids: list[str]) -> list[dict[str, Any]]:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=30) as http:
        return [http.get(f"/v1/images/jobs/{job_id}").json() for job_id in ids]


def wait_final(base: str, secret: str, ids: list[str], seconds: float = 45) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while True:
        jobs = jobs_of(base, secret, ids)
        if all(j.get("status") in FINAL for j in jobs):
            return jobs
        assert time.monotonic() < deadline, Counter(j.get("status") for j in jobs)
        time.sleep(0.3)


def wait_some_done(base: str, secret: str, ids: list[str], at_least: int) -> None:
    deadline = time.monotonic() + 30
    while sum(j["status"] == "succeeded" for j in jobs_of(base, secret, ids)) < at_least:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def check_exactly_once(upstream: SlowOpenAI, jobs: list[dict[str, Any]], base: str, key_id: str) -> Counter[str]:
    """Nothing ran twice upstream, nothing was charged twice, nothing stays reserved."""
    seen = upstream.prompts()
    assert max(seen.values()) == 1, [p for p, n in seen.items() if n > 1]
    statuses = Counter(j["status"] for j in jobs)
    for i, job in enumerate(jobs):
        if job["status"] == "succeeded":
            assert seen[f"job {i}"] == 1 and Decimal(job["cost_usd"]) > 0
            assert len(job["result"]["data"]) == 1
        else:  # only what the crash interrupted: it was at the upstream and is not sent again
            assert job["status"] == "failed" and job["error"]["code"] == "job_interrupted", job
            assert job["status_code"] == 502 and Decimal(job["cost_usd"]) == 0
            assert seen[f"job {i}"] == 1
    spent, reserved = money(base, key_id)
    assert reserved == 0
    assert spent == sum(Decimal(j["cost_usd"]) for j in jobs)
    usage = admin(base, "GET", "/admin/usage", params={"key": key_id, "group_by": "key"}).json()["data"]
    assert usage[0]["requests"] == JOBS  # one settlement (one usage row) per job
    return statuses


def test_kill_9_with_50_jobs_then_restart_loses_and_repeats_nothing(tmp_path: Path) -> None:
    with SlowOpenAI() as upstream:
        cfg = config(upstream.base_url)
        with serve_process(cfg, tmp_path) as first:
            key = new_key(first.base_url)
            ids = submit_all([first.base_url], key["key"])
            spent, reserved = money(first.base_url, key["id"])
            assert reserved > 0  # every accepted job holds its worst case
            wait_some_done(first.base_url, key["key"], ids, 8)  # some done, some running, most queued
            first.kill()
        before = len(upstream.received)
        with serve_process(cfg, tmp_path) as second:  # same database, a new process
            jobs = wait_final(second.base_url, key["key"], ids)
            statuses = check_exactly_once(upstream, jobs, second.base_url, key["id"])
        assert statuses["succeeded"] >= JOBS - 8 and statuses["failed"] >= 1  # the killed ones were mid-call
        assert len(upstream.received) > before  # the restarted server ran the rest


def test_two_replicas_on_postgres_one_killed_the_other_takes_over(tmp_path: Path) -> None:
    from pg import postgres_instance

    with postgres_instance() as pg, SlowOpenAI() as upstream:
        cfg = config(upstream.base_url, database={"url": pg.url})
        with serve_process(cfg, tmp_path / "a") as a, serve_process(cfg, tmp_path / "b") as b:
            key = new_key(a.base_url)
            ids = submit_all([a.base_url, b.base_url], key["key"])
            wait_some_done(b.base_url, key["key"], ids, 12)
            a.kill()
            killed_at = time.monotonic()
            jobs = wait_final(b.base_url, key["key"], ids)
            statuses = check_exactly_once(upstream, jobs, b.base_url, key["id"])
            assert statuses["failed"] >= 1  # a's jobs at the upstream when it died
            assert statuses["succeeded"] >= JOBS - 16
            assert time.monotonic() - killed_at < 40


def _force_settling(db_file: Path, job_id: str, outcome: dict[str, Any] | None = None) -> None:
    """The state a crash leaves between storing a job's outcome and ending it:
    ``settling``, held by a process that is gone, its lease lapsed."""
    import json
    import sqlite3

    with sqlite3.connect(db_file) as conn:
        if outcome is not None:
            conn.execute("UPDATE image_jobs SET outcome = ?, result = ? WHERE id = ?",
                         (json.dumps(outcome), b'{"created":1,"data":[]}', job_id))  # fmt: skip
        conn.execute(
            "UPDATE image_jobs SET status = 'settling', lease_owner = 'another-host:1:gone', "
            "lease_until = '2000-01-01 00:00:00.000000', cost_nusd = NULL, finished_at = NULL WHERE id = ?",
            (job_id,),
        )


def test_a_settling_job_taken_over_is_charged_once_even_when_settled_twice(tmp_path: Path) -> None:
    from standin_openai import USAGE

    with SlowOpenAI() as upstream:
        key, job_id = _one_queued_job(upstream, tmp_path)
        db_file = tmp_path / "data" / "imagegate.db"
        outcome = {"final": "succeeded", "images": 1, "usage": {**{k: USAGE[k] for k in ("input_tokens", "output_tokens",
                   "total_tokens")}, "input_text_tokens": 40, "input_image_tokens": 160, "output_image_tokens": 1056,
                   "output_text_tokens": 0, "input_cached_tokens": 0}, "meta": {"created": None, "size": "1024x1024",
                   "quality": "low", "background": None}, "status": 200, "error_code": None, "upstream_cost_nusd": None,
                   "model": "gpt-image-1", "provider": "up", "upstream_model": "gpt-image-1"}  # fmt: skip
        _force_settling(db_file, job_id, outcome)
        with serve_process(config(upstream.base_url), tmp_path) as second:
            (job,) = wait_final(second.base_url, key["key"], [job_id])
            assert job["status"] == "succeeded" and Decimal(job["cost_usd"]) > 0
            assert money(second.base_url, key["id"]) == (Decimal(job["cost_usd"]), 0)
        _force_settling(db_file, job_id)  # as if it crashed after the settlement, before the final state
        with serve_process(config(upstream.base_url), tmp_path) as third:
            (again,) = wait_final(third.base_url, key["key"], [job_id])
            assert again["status"] == "succeeded" and again["cost_usd"] == job["cost_usd"]
            assert money(third.base_url, key["id"]) == (Decimal(job["cost_usd"]), 0)  # not charged twice
            usage = admin(third.base_url, "GET", "/admin/usage", params={"key": key["id"], "group_by": "key"}).json()
            assert usage["data"][0]["requests"] == 1
            assert "already applied" in third.log()
        assert upstream.received == []  # settling never calls the upstream


def _one_queued_job(upstream: SlowOpenAI, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """A key and one job it submitted to a server without workers, stopped since: the job is queued in its database."""
    idle = config(upstream.base_url)
    idle["jobs"] = {**idle["jobs"], "workers": 0}
    with serve_process(idle, tmp_path) as first:
        key = new_key(first.base_url)
        return key, _submit_one(first.base_url, key["key"])


def _submit_one(base: str, secret: str) -> str:
    r = httpx.post(f"{base}/v1/images/generations", headers={"Authorization": f"Bearer {secret}", "Prefer": "respond-async"},
                   json={"model": "gpt-image-1", "prompt": "settle me", "size": "1024x1024", "quality": "low"}, timeout=30)  # fmt: skip
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_a_job_whose_cancel_was_asked_before_its_server_died_is_not_run_by_the_takeover(tmp_path: Path) -> None:
    with SlowOpenAI() as upstream:
        key, job_id = _one_queued_job(upstream, tmp_path)
        import sqlite3

        # Running on a server that died before its first upstream call; the client then cancelled it (200,
        # cancel_requested: true): the running server's heartbeat would have stopped it, but it is gone.
        with sqlite3.connect(tmp_path / "data" / "imagegate.db") as conn:
            conn.execute(
                "UPDATE image_jobs SET status = 'running', lease_owner = 'another-host:1:gone', cancel_requested = 1, "
                "lease_until = '2000-01-01 00:00:00.000000' WHERE id = ?",
                (job_id,),
            )
        with serve_process(config(upstream.base_url), tmp_path) as second:
            (job,) = wait_final(second.base_url, key["key"], [job_id])
            assert job["status"] == "cancelled" and job["error"]["code"] == "job_cancelled", job
            assert Decimal(job["cost_usd"]) == 0
            assert money(second.base_url, key["id"]) == (0, 0)  # nothing charged, the reservation released
        assert upstream.received == []  # the takeover did not run what the client had cancelled
