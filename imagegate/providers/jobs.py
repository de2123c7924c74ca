"""Submit-poll-fetch upstreams (Black Forest Labs, fal, Replicate): one engine.

Such an upstream takes a job, answers with where to ask about it, and when
it is done hands out a short-lived result URL. A :class:`JobProvider`
subclass gives the dialect in four hooks, each one HTTP exchange:

* :meth:`JobProvider.submit` - start one job (an ``exchange(...,
  starts_work=True)``): its id, where to poll it, where to cancel it, and
  the cost the upstream states, if it does; when the submission's answer
  is already final (Replicate's ``Prefer: wait``), ``Job.result`` carries it
  and no poll is made;
* :meth:`JobProvider.poll` - one status check: pending (with the
  upstream's word for it and any hint of when to ask again), ready (the
  result URLs), or failed (the imagegate error it maps to);
* :meth:`JobProvider.cancel` - optional: stop a job nobody waits for;
* :meth:`JobProvider.jobs` - how many jobs a request takes (one per image
  by default: ``n`` jobs run in parallel); :meth:`JobProvider.jobs_for`
  when that depends on the deployment's upstream model.

The engine does the rest, the same for every such upstream:

* **Polling** with backoff: the first check after ``poll_initial_seconds``,
  then ``poll_multiplier`` times longer up to ``poll_max_seconds``, or when
  the upstream says (a ``Retry-After``). A poll that fails for a transient
  reason (a 5xx, a timeout, a broken connection) is tried again, up to
  ``poll_errors`` in a row.
* **Where the credential goes.** Poll and cancel URLs come from the upstream
  (BFL answers with a regional ``polling_url``); the credential is sent only
  to ``base_url``'s host and the hosts ``poll_hosts`` names. Any other URL
  is a 502, and nothing is sent to it.
* **Deadlines.** A job running longer than ``job_timeout_seconds`` (or the
  deployment's ``timeout_seconds``) is a 504; the router's own deadline
  cancels sooner.
* **Cancellation.** When the caller goes away (a client hangs up, a
  deadline passes), every unfinished job is cancelled upstream where the
  upstream has a cancel call, shielded and bounded in time.
* **Results** are downloaded at once, through the gateway's SSRF-checked
  fetcher and without the credential: the URLs expire (BFL's after 10
  minutes) and are never handed to the client.
* **Work that may have started.** Submitting marks the attempt, so a job
  that may be running is never sent again elsewhere (see
  ``providers.base.AttemptRecord``).
* **Partial success.** With several jobs, those that finish are returned
  (and charged) when others fail; when none does, the first failure is the
  answer.
* **Streams.** ``stream=true`` gets a :class:`Progress` item after every
  round of polls (the gateway turns it into a keep-alive comment, so the
  stream stays open through proxies) and each image as its job completes.
  ``run`` consumes the same events: one code path.
* **Cost.** What the upstream states a job costs (BFL's ``cost`` in
  credits) adds up to the request's ``upstream_cost_nusd``: the charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Container, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import SplitResult, urlsplit

import aiohttp
import orjson
from pydantic import Field

from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import (
    CompletedImage,
    Deployment,
    GeneratedImage,
    Progress,
    ProviderResult,
    StreamItem,
    split_cost,
)
from imagegate.errors import ImagegateError, UpstreamError, UpstreamTimeoutError
from imagegate.imaging.probe import sniff_format
from imagegate.providers.base import ProviderContext, ProviderOptions, work_may_have_started
from imagegate.providers.http import HostedOptions, HostedProvider, invalid_response
from imagegate.providers.redact import redact_error

log = logging.getLogger("imagegate.providers.jobs")

# Statuses of a transient poll failure: the job is still there, ask again.
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class JobOptions(HostedOptions):
    """The options every submit-poll-fetch provider takes."""

    # Polls at 0.5, 1.3, 2.6, 4.6, 7.9, 13.1, 21.1 s...: a finished job is seen
    # within poll_max_seconds; 500 jobs pending 20 s cost ~5% of a core (bench/jobs.py).
    poll_initial_seconds: float = Field(0.5, gt=0, le=60)
    poll_max_seconds: float = Field(8.0, gt=0, le=300)
    poll_multiplier: float = Field(1.6, ge=1, le=10)
    # A job that runs longer is a 504 (the deployment's timeout_seconds, when set, wins).
    job_timeout_seconds: float = Field(600.0, gt=0)
    # Failed polls in a row (5xx, timeouts, broken connections) before the job counts as lost.
    poll_errors: int = Field(3, ge=1, le=20)
    # Hosts besides base_url's that poll and cancel URLs may name (shell patterns: "*.bfl.ai").
    poll_hosts: list[str] = []
    # How long a cancel call may take when a job is abandoned.
    cancel_timeout_seconds: float = Field(5.0, gt=0, le=60)


@dataclass(slots=True)
class Job:
    """One upstream job, as its submission answered."""

    id: str
    poll_url: str
    cancel_url: str | None = None
    cost_nusd: int | None = None  # what the upstream states it costs, when it does
    index: int = 0  # which of the request's jobs
    data: dict[str, Any] = field(default_factory=dict)  # the dialect's own
    result: Poll | None = None  # the submission already answered ready or failed: no poll is made


@dataclass(frozen=True, slots=True)
class Poll:
    """One status check's answer."""

    state: Literal["pending", "ready", "failed"]
    status: str = ""  # the upstream's word for it
    urls: Sequence[str] = ()  # ready: the results to download
    error: ImagegateError | None = None  # failed: what the client gets
    retry_after: float | None = None  # the upstream's hint for the next poll
    cost_nusd: int | None = None  # a cost the upstream states only when done (replaces the submission's)


@dataclass(frozen=True, slots=True)
class _Done:
    index: int
    images: list[GeneratedImage]
    cost_nusd: int | None


@dataclass(frozen=True, slots=True)
class _Failed:
    index: int
    error: BaseException


_Event = Progress | _Done | _Failed


class JobProvider(HostedProvider):
    """A submit-poll-fetch upstream (see the module's doc)."""

    options_model: ClassVar[type[ProviderOptions]] = JobOptions
    options: JobOptions

    def __init__(self, name: str, options: ProviderOptions, context: ProviderContext) -> None:
        super().__init__(name, options, context)
        opts = self.options
        # What every poll sends, built once (polls are the hot path): the
        # configured headers only to base_url's origin, the credential to
        # every checked poll URL.
        self._base_origin = _origin(opts.base_url)
        self._poll_headers = {**_AGENT, **opts.headers}
        self._own_poll_headers = {**self._poll_headers, **self._own_auth}
        self._own_foreign_headers = {**_AGENT, **self._own_auth}
        self._poll_timeout = aiohttp.ClientTimeout(total=opts.timeout_seconds, sock_connect=opts.connect_timeout_seconds)

    # -- the dialect's hooks -----------------------------------------------------

    async def submit(self, request: ImageRequest, deployment: Deployment, index: int) -> Job:
        raise NotImplementedError

    async def poll(self, job: Job, deployment: Deployment) -> Poll:
        raise NotImplementedError

    async def cancel(self, job: Job, deployment: Deployment) -> None:
        """Stop ``job`` upstream (default: the upstream has no cancel call)."""

    def jobs(self, request: ImageRequest) -> int:
        """How many jobs ``request`` takes: one per image by default."""
        return request.n

    def jobs_for(self, request: ImageRequest, deployment: Deployment) -> int:
        """How many jobs ``request`` takes on ``deployment`` (default: :meth:`jobs`),
        for a dialect where it depends on the upstream model (a Replicate model
        that takes ``num_outputs`` makes ``n`` images in one job, another one each)."""
        return self.jobs(request)

    # -- the contract ------------------------------------------------------------

    async def run(self, request: ImageRequest, deployment: Deployment) -> ProviderResult:
        images: list[GeneratedImage] = []
        costs: list[int | None] = []  # per finished job: what the upstream stated (None: nothing)
        async with contextlib.aclosing(self._events(request, deployment)) as events:
            async for item in events:
                if isinstance(item, CompletedImage):
                    images.append(item.image)
                    costs.append(item.upstream_cost_nusd)
        # An image without a stated share leaves the whole request to the
        # catalog price: a partial sum would charge too little.
        cost = sum(c for c in costs if c is not None) if costs and None not in costs else None
        return ProviderResult(images, upstream_cost_nusd=cost)

    generate = edit = variation = run

    async def stream(self, request: ImageRequest, deployment: Deployment) -> AsyncIterator[StreamItem]:
        async with contextlib.aclosing(self._events(request, deployment)) as events:
            async for item in events:
                yield item

    async def _events(self, request: ImageRequest, deployment: Deployment) -> AsyncGenerator[StreamItem, None]:
        queue: asyncio.Queue[_Event] = asyncio.Queue()
        count = self.jobs_for(request, deployment)
        tasks = [asyncio.create_task(self._job(request, deployment, i, queue)) for i in range(count)]
        done, failures = 0, list[_Failed]()
        try:
            while done + len(failures) < count:
                event = await queue.get()
                if isinstance(event, Progress):
                    yield event
                elif isinstance(event, _Failed):
                    failures.append(event)
                else:
                    done += 1
                    shares = split_cost(event.cost_nusd, len(event.images))
                    for image, share in zip(event.images, shares, strict=True):
                        yield CompletedImage(image, upstream_cost_nusd=share)
            if failures and not done:
                raise failures[0].error
            for failure in failures:
                log.warning("%s: job %d of %d failed (%s); the others are returned", self.name, failure.index + 1, count,
                            failure.error)  # fmt: skip
        finally:
            await _stop(tasks)

    # -- one job -----------------------------------------------------------------

    async def _job(self, request: ImageRequest, deployment: Deployment, index: int, queue: asyncio.Queue[_Event]) -> None:
        try:
            job = await self.submit(request, deployment, index)
        except BaseException as exc:
            queue.put_nowait(_Failed(index, exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        job.index = index
        # An accepted job is running: mark it here too, since a sibling job
        # refused at the same moment would clear its own exchange's mark.
        work_may_have_started()
        finished = False
        try:
            result = job.result
            poll = result if result is not None and result.state != "pending" else await self._wait(job, deployment, queue)
            finished = True
            if poll.state == "failed":
                queue.put_nowait(_Failed(index, poll.error or UpstreamError(f"The upstream '{self.name}' job failed.")))
                return
            images = [await self._fetch(url, request) for url in poll.urls]
            if not images:
                raise invalid_response(self.name, "a finished job has no result")
            cost = poll.cost_nusd if poll.cost_nusd is not None else job.cost_nusd
            queue.put_nowait(_Done(index, images, cost))
        except asyncio.CancelledError:
            if not finished:
                await asyncio.shield(self._cancel_quietly(job, deployment))
            raise
        except Exception as exc:
            if not finished:
                await asyncio.shield(self._cancel_quietly(job, deployment))
            queue.put_nowait(_Failed(index, exc))

    async def _wait(self, job: Job, deployment: Deployment, queue: asyncio.Queue[_Event]) -> Poll:
        """Poll ``job`` until it is ready or failed, with backoff, within its time."""
        opts = self.options
        limit = deployment.timeout or opts.job_timeout_seconds
        deadline = time.monotonic() + limit
        delay = opts.poll_initial_seconds
        errors = 0
        while True:
            await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                raise UpstreamTimeoutError(f"The upstream '{self.name}' job did not finish within {limit:g} s.")
            try:
                poll = await self.poll(job, deployment)
                errors = 0
            except ImagegateError as exc:
                errors += 1
                if not _transient(exc) or errors >= opts.poll_errors:
                    raise
                log.info("%s: poll of job %s failed (%s); asking again", self.name, job.id, exc.code)
                delay = min(opts.poll_max_seconds, delay * opts.poll_multiplier)
                continue
            if poll.state != "pending":
                return poll
            queue.put_nowait(Progress(poll.status or "pending"))
            hint = poll.retry_after
            delay = min(opts.poll_max_seconds, hint if hint is not None and hint > 0 else delay * opts.poll_multiplier)

    async def _cancel_quietly(self, job: Job, deployment: Deployment) -> None:
        try:
            async with asyncio.timeout(self.options.cancel_timeout_seconds):
                await self.cancel(job, deployment)
        except Exception as exc:  # a job we could not cancel runs out upstream; say so
            log.warning("%s: could not cancel job %s: %s", self.name, job.id, exc)

    async def _fetch(self, url: str, request: ImageRequest) -> GeneratedImage:
        data = await self.download(url)
        fmt = sniff_format(data[:64])
        if fmt is None:
            raise invalid_response(self.name, "a result is not PNG, JPEG or WebP")
        return GeneratedImage(data, fmt)

    # -- the poll path --------------------------------------------------------------

    async def get_json(self, url: str, deployment: Deployment, ok: Container[int] = (200,)) -> Any:
        """GET a checked poll URL (``checked_url``) with the credential and
        return its JSON: the hottest path of a job provider, so it goes
        straight to the provider's pooled aiohttp session (httpx's request
        and response objects cost more than a poll: bench/jobs.py). Errors
        map as :meth:`exchange` maps them (status answers via
        :meth:`error_from`, timeouts, broken connections), redacted."""
        opts = self.options
        if deployment.api_key:
            auth = self.auth_headers(deployment.api_key)
            headers = {**(self._poll_headers if _origin(url) == self._base_origin else _AGENT), **auth}
        else:
            headers = self._own_poll_headers if _origin(url) == self._base_origin else self._own_foreign_headers
        timeout = self._poll_timeout
        if deployment.timeout or deployment.connect_timeout:
            timeout = aiohttp.ClientTimeout(
                total=deployment.timeout or opts.timeout_seconds,
                sock_connect=deployment.connect_timeout or opts.connect_timeout_seconds,
            )
        try:
            async with self.transport.session().get(url, headers=headers, timeout=timeout, allow_redirects=False) as answer:
                body = await _capped(answer, POLL_MAX_BYTES)
                if body is None:
                    raise invalid_response(self.name, f"a poll's answer is larger than {POLL_MAX_BYTES} bytes")
                if answer.status not in ok:
                    raise self.error_from(answer.status, body, answer.headers)
        except ImagegateError as exc:
            raise redact_error(exc, self.secrets(deployment)) from None
        except TimeoutError:
            raise self.timeout_error() from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(f"Could not connect to the upstream '{self.name}'.", code="upstream_unreachable") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"The connection to the upstream '{self.name}' broke off ({type(exc).__name__}).",
                code="upstream_connection_error",
            ) from exc
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise invalid_response(self.name, f"a poll's answer is not JSON ({len(body)} bytes)") from None

    # -- URLs the upstream hands out ---------------------------------------------

    def checked_url(self, url: object, what: str) -> str:
        """An upstream-supplied poll or cancel URL the credential may go to:
        http(s), on ``base_url``'s origin (host and port) or on a host one of
        ``poll_hosts`` names (with https, on its default port); else a 502."""
        if not isinstance(url, str):
            raise invalid_response(self.name, f"its {what} is not a URL")
        try:
            parts = urlsplit(url)
            base = urlsplit(self.options.base_url)
            port, base_port = _port(parts), _port(base)
        except ValueError:
            raise invalid_response(self.name, f"its {what} is not a URL") from None
        host = (parts.hostname or "").lower()
        same_origin = host == (base.hostname or "").lower() and port == base_port and parts.scheme == base.scheme
        named = (
            parts.scheme == "https"
            and parts.port in (None, 443)
            and any(fnmatch.fnmatch(host, p.lower()) for p in self.options.poll_hosts)
        )
        if parts.scheme not in ("http", "https") or not (same_origin or named):
            raise invalid_response(self.name, f"its {what} is on a host this gateway does not send the credential to")
        return url


_AGENT = {"User-Agent": "imagegate"}
# A poll's answer is a small JSON document; anything larger is not one.
POLL_MAX_BYTES = 1024 * 1024


async def _capped(answer: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes (the rest unread)."""
    if answer.content_length is not None and answer.content_length > limit:
        return None
    chunks, size = [], 0
    async for chunk in answer.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), _port(parts)


def _port(parts: SplitResult) -> int | None:
    return parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _transient(exc: ImagegateError) -> bool:
    return (
        isinstance(exc, UpstreamTimeoutError)
        or exc.status in _TRANSIENT_STATUS
        or exc.code
        in (
            "upstream_connection_error",
            "upstream_unreachable",
        )
    )


async def _stop(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel the unfinished jobs' tasks and wait for their cancel calls."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
