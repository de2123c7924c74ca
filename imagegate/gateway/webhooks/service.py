"""The webhooks of asynchronous jobs, as the rest of the gateway sees them.

:class:`Webhooks` plugs into the jobs core through its two hooks
(:mod:`imagegate.gateway.jobs.view`): :meth:`Webhooks.check_url` decides at
submission which URL a job will carry (the request's
``Imagegate-Webhook-Url``, else its key's ``webhook_url``), and
:meth:`Webhooks.job_finished` puts a finished job's webhook in the outbox.
:meth:`Webhooks.run` is the replica's delivery loop
(:class:`~.deliver.Deliverer`) plus a sweep for finished jobs whose listener
call a crash lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import and_, exists, select
from sqlalchemy.exc import IntegrityError

from imagegate.accounting.caller import Caller
from imagegate.accounting.vault import Vault
from imagegate.accounting.webhook_keys import secret_of
from imagegate.config import WebhooksConfig
from imagegate.db.engine import Database
from imagegate.db.models import ImageJob, WebhookDelivery, utcnow
from imagegate.errors import InvalidRequestError
from imagegate.gateway.jobs.view import FINAL, JobView
from imagegate.gateway.webhooks import outbox
from imagegate.gateway.webhooks.deliver import Deliverer
from imagegate.gateway.webhooks.payload import event_type, job_payload
from imagegate.gateway.webhooks.urls import HEADER, WebhookURLs

log = logging.getLogger("imagegate.webhooks")

Render = Callable[[ImageJob], JobView]  # the jobs core's row -> job object

SWEEP_AFTER_SECONDS = 30.0  # a finished job's listener has had this long to enqueue it
SWEEP_EVERY_SECONDS = 60.0


def message_id(job_id: str) -> str:
    """The webhook-id of a job's delivery: the same however often, or by
    however many replicas, it is enqueued (so it is enqueued once)."""
    return "msg_" + hashlib.sha256(job_id.encode()).hexdigest()[:32]


class Webhooks:
    def __init__(self, config: WebhooksConfig, db: Database, vault: Vault, render: Render) -> None:
        self.config = config
        self.db = db
        self.render = render
        self.urls = WebhookURLs(config)
        self.deliverer = Deliverer(db, config, self.urls, lambda key_id: secret_of(db, vault, key_id))
        self._task: asyncio.Task[None] | None = None

    async def check_url(self, url: str | None, caller: Caller) -> str | None:
        """The URL a job submitted by ``caller`` will be POSTed to when it
        ends: the request's ``Imagegate-Webhook-Url`` (checked; a 400 naming
        it), else the key's own (None: no webhook). Every webhook is signed,
        so the header needs a key with a webhook secret."""
        if url is None:  # the key's own, read with the key when it authenticated
            return caller.webhook_url
        checked = await self.urls.check(url, param=HEADER, per_request=True)
        if caller.key_id is None or not caller.webhook_signed:
            raise InvalidRequestError(
                f"'{HEADER}' needs an API key with a webhook secret, which signs every webhook; an administrator "
                "makes one (POST /admin/keys/{id}/webhook-secret, or imagegate keys rotate-webhook-secret).",
                param=HEADER,
                code="webhook_secret_missing",
            )
        return checked

    async def job_finished(self, job: JobView) -> None:
        """Put ``job``'s webhook in the outbox (the jobs core's listener)."""
        event = event_type(job)
        if event is None or job.webhook_url is None or job.key_id is None:
            return
        try:
            async with self.db.transaction() as session:
                await outbox.enqueue(
                    session, message_id=message_id(job.id), job_id=job.id, key_id=job.key_id,
                    url=job.webhook_url, event=event, payload=job_payload(job),
                )  # fmt: skip
        except IntegrityError:
            return  # another replica's sweep was first
        self.deliverer.wake()

    async def sweep(self) -> int:
        """Enqueue the webhooks of jobs that finished (a while ago, but within
        ``retry_seconds``) with none in the outbox: a crash between a job's
        end and its listener call. How many."""
        now = utcnow()
        window = (now - timedelta(seconds=self.config.retry_seconds), now - timedelta(seconds=SWEEP_AFTER_SECONDS))
        missing = ~exists().where(WebhookDelivery.job_id == ImageJob.id)
        query = select(ImageJob).where(
            ImageJob.status.in_(FINAL), ImageJob.webhook_url.is_not(None), ImageJob.key_id.is_not(None),
            and_(ImageJob.finished_at >= window[0], ImageJob.finished_at <= window[1]), missing,
        ).limit(20)  # fmt: skip
        # (20 at a time: the rows carry their results)
        async with self.db.read() as session:
            rows = list((await session.execute(query)).scalars())
        for row in rows:
            await self.job_finished(self.render(row))
        await outbox.prune(self.db)
        return len(rows)

    async def run(self) -> None:
        """The delivery loop and the sweep, until cancelled."""
        loop = asyncio.create_task(self.deliverer.forever(), name="imagegate-webhooks")
        try:
            while True:
                try:
                    if await self.sweep():
                        log.info("webhooks: enqueued finished jobs whose webhook a crash had lost")
                except Exception as exc:
                    log.warning("webhooks: sweeping finished jobs failed: %s", exc)
                await asyncio.sleep(SWEEP_EVERY_SECONDS)
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    async def start(self) -> None:
        """Run :meth:`run` in the background until :meth:`aclose`."""
        self._task = asyncio.create_task(self.run(), name="imagegate-webhooks-sweep")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.deliverer.aclose()
