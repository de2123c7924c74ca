"""The submit-poll-fetch engine (providers/jobs.py) with a dialect kept in
memory: n jobs in parallel, progress, partial success, transient polls,
deadlines, cancellation of abandoned jobs, and where the credential may go.
The providers built on it are tested against their stand-ins."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping
from typing import Any

import pytest
from PIL import Image

from imagegate.contract import catalog
from imagegate.contract.requests import GenerationFields, ImageRequest
from imagegate.contract.results import CompletedImage, Deployment, Progress, split_cost
from imagegate.errors import InvalidRequestError, UpstreamError, UpstreamTimeoutError
from imagegate.providers.base import ProviderContext, attempt_record
from imagegate.providers.jobs import Job, JobOptions, JobProvider, Poll


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, "PNG")
    return out.getvalue()


class Scripted(JobProvider):
    """Jobs whose polls follow a script: a list of Poll (or exceptions) per job index."""

    type_name = "scripted"

    def __init__(self, scripts: Mapping[int, list[Any]], **options: Any) -> None:
        async def fetch(url: str, **_: Any) -> bytes:
            self.fetched.append(url)
            return png()

        opts = JobOptions(base_url="https://api.example.com", poll_initial_seconds=0.01, poll_max_seconds=0.02, **options)
        super().__init__("scripted", opts, ProviderContext(max_image_pixels=10**8, fetch_url=fetch))
        self.scripts = {i: list(s) for i, s in scripts.items()}
        self.cancelled: list[str] = []
        self.fetched: list[str] = []
        self.costless: set[int] = set()  # jobs whose submission states no cost

    async def submit(self, request: ImageRequest, deployment: Deployment, index: int) -> Job:
        script = self.scripts[index]
        if script and isinstance(script[0], BaseException) and getattr(script[0], "at_submit", False):
            raise script.pop(0)
        cost = None if index in self.costless else 40_000_000
        return Job(f"job-{index}", f"https://api.example.com/poll/{index}", cost_nusd=cost)

    async def poll(self, job: Job, deployment: Deployment) -> Poll:
        step = self.scripts[job.index].pop(0) if len(self.scripts[job.index]) > 1 else self.scripts[job.index][0]
        if isinstance(step, BaseException):
            raise step
        return step

    async def cancel(self, job: Job, deployment: Deployment) -> None:
        self.cancelled.append(job.id)


PENDING = Poll("pending", "Pending")
READY = Poll("ready", "Ready", urls=["https://cdn.example.com/x.png"])
DEP = Deployment("scripted", "flux")


def request(n: int = 1) -> ImageRequest:
    spec = catalog.lookup("flux-kontext-pro")
    assert spec is not None
    return ImageRequest("generations", "flux-kontext-pro", spec, GenerationFields(prompt="x", n=n))


async def test_n_jobs_run_in_parallel_and_their_costs_add_up() -> None:
    provider = Scripted({i: [PENDING, PENDING, READY] for i in range(3)})
    result = await provider.run(request(3), DEP)
    assert len(result.images) == 3 and all(img.format == "png" for img in result.images)
    assert result.upstream_cost_nusd == 3 * 40_000_000
    assert len(provider.fetched) == 3 and provider.cancelled == []


async def test_a_stream_sees_progress_then_the_images() -> None:
    provider = Scripted({0: [PENDING, PENDING, READY]})
    items = [item async for item in provider.stream(request(), DEP)]
    assert [type(i) for i in items] == [Progress, Progress, CompletedImage]
    assert items[0].status == "Pending"  # type: ignore[union-attr]
    assert items[-1].upstream_cost_nusd == 40_000_000  # type: ignore[union-attr]


async def test_finished_jobs_are_returned_when_others_fail_and_the_first_failure_when_none_finish() -> None:
    moderated = InvalidRequestError("moderated", code="content_policy_violation")
    provider = Scripted({0: [READY], 1: [Poll("failed", "Content Moderated", error=moderated)], 2: [READY]})
    result = await provider.run(request(3), DEP)
    assert len(result.images) == 2 and result.upstream_cost_nusd == 2 * 40_000_000
    provider = Scripted({0: [Poll("failed", error=moderated)], 1: [Poll("failed", error=moderated)]})
    with pytest.raises(InvalidRequestError) as err:
        await provider.run(request(2), DEP)
    assert err.value.code == "content_policy_violation"


class Answered(Scripted):
    """Submissions whose answer may already be final (Replicate's Prefer: wait)."""

    def __init__(self, results: Mapping[int, Poll], scripts: Mapping[int, list[Any]] | None = None) -> None:
        super().__init__(scripts or {})
        self.results = results
        self.polls = 0

    async def submit(self, request: ImageRequest, deployment: Deployment, index: int) -> Job:
        return Job(f"job-{index}", f"https://api.example.com/poll/{index}", result=self.results[index])

    async def poll(self, job: Job, deployment: Deployment) -> Poll:
        self.polls += 1
        return await super().poll(job, deployment)


async def test_a_submission_that_answered_finished_is_not_polled() -> None:
    moderated = InvalidRequestError("moderated", code="content_policy_violation")
    provider = Answered({0: READY, 1: Poll("failed", "failed", error=moderated)})
    items = [item async for item in provider.stream(request(2), DEP)]
    assert [type(i) for i in items] == [CompletedImage]  # no Progress: nothing was polled
    assert provider.polls == 0 and provider.fetched == ["https://cdn.example.com/x.png"] and provider.cancelled == []
    # a submission still pending is polled as usual
    provider = Answered({0: PENDING}, {0: [PENDING, READY]})
    assert len((await provider.run(request(), DEP)).images) == 1
    assert provider.polls == 2


async def test_how_many_jobs_may_depend_on_the_deployment() -> None:
    class PerModel(Scripted):
        def jobs_for(self, request: ImageRequest, deployment: Deployment) -> int:
            return 1 if deployment.model == "makes-n" else request.n

    provider = PerModel({i: [READY] for i in range(3)})
    assert len((await provider.run(request(3), Deployment("scripted", "makes-n"))).images) == 1
    assert len((await provider.run(request(3), DEP)).images) == 3
    assert Scripted({}).jobs_for(request(3), DEP) == 3  # the default: jobs(request)


async def test_transient_poll_failures_are_asked_again_up_to_a_limit() -> None:
    flaky = UpstreamError("bad gateway", status=502)
    provider = Scripted({0: [flaky, flaky, READY]})
    assert len((await provider.run(request(), DEP)).images) == 1
    provider = Scripted({0: [flaky, flaky, flaky, READY]}, poll_errors=3)
    with pytest.raises(UpstreamError):
        await provider.run(request(), DEP)
    assert provider.cancelled == ["job-0"]  # a job we lost track of is cancelled


async def test_a_job_past_its_time_is_a_504_and_cancelled_upstream() -> None:
    provider = Scripted({0: [PENDING]}, job_timeout_seconds=0.1)
    with pytest.raises(UpstreamTimeoutError):
        await provider.run(request(), DEP)
    assert provider.cancelled == ["job-0"]


async def test_an_abandoned_request_cancels_every_unfinished_job_and_marks_the_attempt() -> None:
    provider = Scripted({0: [PENDING], 1: [PENDING], 2: [READY]})
    with attempt_record() as record:
        task = asyncio.create_task(provider.run(request(3), DEP))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sorted(provider.cancelled) == ["job-0", "job-1"]
    # an abandoned stream (a client that hung up) too
    provider = Scripted({0: [PENDING]})
    stream = provider.stream(request(), DEP)
    assert isinstance(await anext(stream), Progress)
    await stream.aclose()  # type: ignore[attr-defined]
    assert provider.cancelled == ["job-0"]
    assert record.maybe_started is True  # accepted jobs are running: never submitted again elsewhere


def test_the_credential_goes_only_to_the_api_host_and_the_hosts_named() -> None:
    provider = Scripted({}, poll_hosts=["*.bfl.ai"])
    assert provider.checked_url("https://api.example.com/v1/get_result?id=1", "polling_url")
    assert provider.checked_url("https://api.us1.bfl.ai/v1/get_result?id=1", "polling_url")
    bad_urls = (
        "https://evil.example.net/x",
        "http://api.example.com/x",  # not base_url's scheme
        "https://api.example.com:8443/x",  # not its port
        "https://api.us1.bfl.ai:8443/x",  # a named host on another port
        "https://bfl.ai.evil.net/x",
        "https://api.example.com:99999/x",
        42,
    )
    for bad in bad_urls:
        with pytest.raises(UpstreamError):
            provider.checked_url(bad, "polling_url")


async def test_a_job_without_a_stated_cost_leaves_the_request_to_the_catalog_price() -> None:
    provider = Scripted({0: [READY], 1: [READY]})
    provider.costless = {1}
    result = await provider.run(request(2), DEP)
    assert len(result.images) == 2 and result.upstream_cost_nusd is None  # not the $0.04 of one job


def test_a_stated_cost_is_shared_by_a_jobs_images_to_the_nano_dollar() -> None:
    assert split_cost(100, 3) == [33, 33, 34] and split_cost(None, 2) == [None, None] and split_cost(7, 1) == [7]
