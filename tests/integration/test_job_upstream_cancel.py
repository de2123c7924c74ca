"""Cancelling an async job cancels its upstream job too, where the provider
can (docs/jobs.md): a job (``Prefer: respond-async``) served by Replicate
whose prediction stays ``processing`` (the stand-in's ``never`` prompt) is
cancelled with ``DELETE /v1/images/jobs/{id}``; the job ends ``cancelled``,
the stand-in gets ``POST /v1/predictions/{id}/cancel`` for that prediction
(tests/standin_replicate.py), and the key is charged nothing and holds no
reservation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standin_replicate import KEY, ReplicateStandIn
from test_jobs_crash import MASTER, money, new_key

from support import SIGNING_KEY, Running, run_server

SCHNELL = "black-forest-labs/flux-schnell"


@pytest.fixture(scope="module")
def up() -> Iterator[ReplicateStandIn]:
    with ReplicateStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def gateway(up: ReplicateStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    rep = {"type": "replicate", "base_url": up.base_url, "api_key": KEY, "wait_seconds": 0,
           "poll_initial_seconds": 0.02, "poll_max_seconds": 0.05}  # fmt: skip
    cfg = {
        "auth": {"master_key": MASTER},
        "storage": {"signing_key": SIGNING_KEY},
        "providers": {"rep": rep},
        "models": {"flux-schnell": {"deployments": [{"provider": "rep", "model": SCHNELL}], "routing": {"max_attempts": 1}}},
        "jobs": {"workers": 2, "lease_seconds": 2, "poll_seconds": 0.2, "drain_seconds": 0},
    }
    with run_server(cfg, tmp_path_factory.mktemp("job-upstream-cancel")) as running:
        yield running


def _until(what: str, ok: Any, seconds: float = 5) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := ok()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def test_cancelling_a_running_job_cancels_its_replicate_prediction(up: ReplicateStandIn, gateway: Running) -> None:
    key = new_key(gateway.base_url)
    headers = {"Authorization": f"Bearer {key['key']}", "Prefer": "respond-async"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=30) as http:
        r = http.post("/v1/images/generations", json={"model": "flux-schnell", "prompt": "a fox, never done"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert money(gateway.base_url, key["id"])[1] > 0  # the job holds its reservation
        # running, with the prediction created and polled past "starting"
        _until("the job to run", lambda: http.get(f"/v1/images/jobs/{job_id}").json()["status"] == "running")
        (pred,) = _until("the prediction", lambda: list(up.predictions.values()))
        _until("the prediction to be processing", lambda: pred.status == "processing")
        assert up.cancelled == []

        r = http.delete(f"/v1/images/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["id"] == job_id, r.text
        done = _until("the job to end", lambda: (j := http.get(f"/v1/images/jobs/{job_id}").json())["status"]
                      in ("succeeded", "failed", "cancelled") and j)  # fmt: skip
        assert done["status"] == "cancelled" and done["error"]["code"] == "job_cancelled", done
        assert done["cost_usd"] == "0.000000"

    _until("the cancel call", lambda: up.cancelled)
    assert up.cancelled == [pred.id] and pred.status == "canceled"
    (cancel,) = up.requests("POST", "/v1/predictions/")
    assert cancel.path == f"/v1/predictions/{pred.id}/cancel"
    assert cancel.headers["authorization"] == f"Bearer {KEY}"
    (create,) = up.requests("POST", "/v1/models/")
    assert create.path == f"/v1/models/{SCHNELL}/predictions" and create.json["input"]["prompt"] == "a fox, never done"
    assert _until("the reservation back", lambda: money(gateway.base_url, key["id"]) == (0, 0))
