"""Cancelling a running job through a replica that does not run it
(docs/jobs.md, "Cancelling"): two real server processes on one PostgreSQL
database; only replica A has workers (B has ``jobs.workers: 0``: it accepts
and answers, runs nothing), so A runs the job. ``DELETE`` through B can only
mark ``cancel_requested`` in the database; A's heartbeat (every third of
``jobs.lease_seconds``) reads it and cancels its task, which hangs up on the
slow stand-in upstream. The job ends ``cancelled`` within about one
heartbeat, charged nothing, its reservation released, and is not run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
from standin_openai import Fault
from test_jobs_crash import SlowOpenAI, admin, config, money, new_key

from support import serve_process

LEASE = 3.0  # the heartbeat comes every LEASE / 3 = 1 s
HEARTBEAT = LEASE / 3
FINAL = ("succeeded", "failed", "cancelled")
ZERO = Decimal(0)
T = TypeVar("T")


class TimedSlowOpenAI(SlowOpenAI):
    """SlowOpenAI that also notes when each request arrived and when its caller hung up."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[float] = []
        self.cut: list[float] = []

    def answer(self, h: Any, rec: Any, fault: Fault | None) -> None:
        with self._lock:
            self.arrived.append(time.monotonic())
            aborted_before = self.aborted
        super().answer(h, rec, fault)
        with self._lock:
            if self.aborted > aborted_before:
                self.cut.append(time.monotonic())


def until(what: str, ok: Callable[[], T | None], seconds: float) -> T:
    deadline = time.monotonic() + seconds
    while not (value := ok()):
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.02)
    return value


def test_delete_through_the_other_replica_cancels_the_running_job_at_the_next_heartbeat(tmp_path: Path) -> None:
    from pg import postgres_instance

    with postgres_instance() as pg, TimedSlowOpenAI() as up:
        up.delay = 20.0  # far longer than the test waits: only a hang-up ends it early
        cfg = config(up.base_url, database={"url": pg.url})
        cfg["jobs"] = {**cfg["jobs"], "lease_seconds": LEASE}
        idle = {**cfg, "jobs": {**cfg["jobs"], "workers": 0}}
        with serve_process(cfg, tmp_path / "a") as a, serve_process(idle, tmp_path / "b") as b:
            key = new_key(a.base_url)
            auth = {"Authorization": f"Bearer {key['key']}"}
            with httpx.Client(base_url=a.base_url, headers=auth, timeout=30) as via_a, \
                 httpx.Client(base_url=b.base_url, headers=auth, timeout=30) as via_b:  # fmt: skip
                r = via_a.post("/v1/images/generations", headers={"Prefer": "respond-async"},
                               json={"model": "gpt-image-1", "prompt": "cancel me from b", "size": "1024x1024",
                                     "quality": "low"})  # fmt: skip
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
                reserved = Decimal(r.json()["reserved_usd"])
                assert reserved > 0 and money(a.base_url, key["id"]) == (ZERO, reserved)

                # A runs it (B has no workers) and its upstream call is in flight
                until("the upstream request", lambda: up.in_flight == 1, 10)
                running = via_b.get(f"/v1/images/jobs/{job_id}").json()
                assert running["status"] == "running" and "cancel_requested" not in running, running

                sent_at = time.monotonic()
                r = via_b.delete(f"/v1/images/jobs/{job_id}")
                asked_at = time.monotonic()
                assert r.status_code == 200, r.text
                asked = r.json()
                assert asked["id"] == job_id
                # B cannot stop A's task: the request is recorded for A's heartbeat (unless it already came)
                pending = asked["status"] == "running" and asked["cancel_requested"] is True
                assert pending or asked["status"] == "cancelled", asked

                # within one heartbeat (plus the renew and the settlement), read through either replica
                done = until("the job to end", lambda: (j := via_b.get(f"/v1/images/jobs/{job_id}").json())["status"] in FINAL
                             and j, HEARTBEAT + 2.0)  # fmt: skip
                assert done["status"] == "cancelled", done
                assert done["error"]["code"] == "job_cancelled" and done["status_code"] == 499, done
                assert done["cost_usd"] == "0.000000" and done["reserved_usd"] == "0.000000", done
                assert "cancel_requested" not in done and "result" not in done
                assert via_a.get(f"/v1/images/jobs/{job_id}").json()["status"] == "cancelled"

                # the upstream saw the connection closed, after the DELETE, long before its answer was due
                until("the upstream hang-up", lambda: up.cut, 2)
                assert up.aborted == 1 and up.served == []
                (arrived,), (cut,) = up.arrived, up.cut
                assert sent_at < cut < arrived + up.delay / 2, (arrived, sent_at, cut)
                assert cut - asked_at < HEARTBEAT + 1.0, cut - asked_at

                # nothing charged, nothing reserved, one settlement (read through both replicas)
                assert until("the reservation back", lambda: money(b.base_url, key["id"]) == (ZERO, ZERO), 2)
                assert money(a.base_url, key["id"]) == (ZERO, ZERO)
                usage = admin(b.base_url, "GET", "/admin/usage", params={"key": key["id"], "group_by": "key"}).json()["data"]
                assert [row["requests"] for row in usage] == [1], usage
                assert Decimal(usage[0]["cost_usd"]) == 0, usage

                again = via_b.delete(f"/v1/images/jobs/{job_id}")
                assert again.status_code == 409 and "cancelled" in again.json()["error"]["message"], again.text

                # not run again: a lease's worth later (a takeover would have come by then) still one request
                time.sleep(LEASE)
                assert len(up.received) == 1 and up.in_flight == 0
                assert via_a.get(f"/v1/images/jobs/{job_id}").json()["status"] == "cancelled"
