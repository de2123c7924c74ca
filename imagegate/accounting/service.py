"""The accounting service the gateway calls around every request.

* ``authenticate`` - who is calling: the master key, a static key from the
  config, a database key (with its limits and budget), or nobody (only while
  no key is required: the config sets none and the database holds none, or
  the config says ``auth.required: false``).
* ``check_limits`` - may this caller use this model, and is it within its
  rate limits: checked before any expensive work (URL fetches, decoding).
* ``admit`` - reserve the request's worst-case cost on the key's (and team's)
  budget, as a reservation row with an owner and an expiry
  (``reservations.py``). Refusals are recorded as usage rows too.
* ``settle`` - the request is over: charge its real cost (nothing for a
  failure or a cancellation), release the reservation, write the usage row,
  in one transaction. When the database cannot take it, the settlement is
  retried, then journaled durably (``journal.py``) and replayed later.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.accounting import budgets, keycache, keys, reservations
from imagegate.accounting.caller import Caller
from imagegate.accounting.journal import SettlementJournal
from imagegate.accounting.money import usd_str
from imagegate.accounting.prices import Price, PriceBook, actual, price_names, worst_case
from imagegate.accounting.ratelimit import RateLimiter
from imagegate.accounting.usage import UsageWriter
from imagegate.accounting.vault import Vault
from imagegate.config import Settings
from imagegate.contract import catalog
from imagegate.contract.catalog import ModelSpec
from imagegate.contract.requests import ImageRequest
from imagegate.contract.results import Deployment, ImageMeta, Usage
from imagegate.db.engine import Database
from imagegate.db.migrate import upgrade_async
from imagegate.db.models import ApiKey, Team, UsageRecord, utcnow
from imagegate.errors import (
    AuthenticationError,
    ImagegateError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
)

log = logging.getLogger("imagegate.accounting")


ANONYMOUS = Caller("anonymous")
_NO_DEPLOYMENT = Deployment(provider="", model="")
_INSERT_USAGE = insert(UsageRecord.__table__)  # built once: the hot path
# Retries of a settlement the database refused, before it is journaled.
SETTLE_RETRY_DELAYS = (0.1, 0.5, 1.5)
# While no database key exists (and the config leaves auth.required unset),
# how long "none yet" is believed before the database is asked again: a key
# made with `imagegate keys create` in another process is enforced this soon.
KEYS_RECHECK_SECONDS = 2.0


@dataclass(slots=True)
class Admission:
    caller: Caller
    request: ImageRequest  # as asked; after serve(), as served (a fallback's model)
    deployment: Deployment  # the first candidate; after serve(), the one that served
    request_id: str
    reserved: int
    started: float = field(default_factory=time.monotonic)
    reservation_id: str | None = None  # the row that holds ``reserved``; None when nothing is held
    # A settlement id fixed in advance (a job's ``job:<id>``): settling again
    # with it charges nothing twice (the usage row's unique settlement_id).
    settlement_id: str | None = None

    def serve(self, request: ImageRequest, deployment: Deployment) -> None:
        self.request, self.deployment = request, deployment


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended: images delivered (with usage), or an error status
    (with the images a stream had delivered before it, which are charged)."""

    images: int = 0
    usage: Usage | None = None
    meta: ImageMeta = ImageMeta()
    status: int = 200
    error_code: str | None = None
    upstream_cost_nusd: int | None = None  # what the upstream said it charged (checked): the charge


class BudgetRefused(Exception):
    """A reservation a budget refused: ``which`` ("key"/"team"), the key's
    budget ``period``, the nano-dollars ``wanted``."""

    def __init__(self, which: str, period: str, wanted: int) -> None:
        self.which, self.period, self.wanted = which, period, wanted


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _caller_of(key: ApiKey) -> Caller:
    """A valid database key's caller (without a virtual key)."""
    return Caller(
        "key",
        key_id=key.id,
        team=key.team,
        is_admin=key.is_admin,
        models=tuple(key.allowed_models) if key.allowed_models is not None else None,
        rpm=key.rpm,
        ipm=key.ipm,
        identity=f"key:{key.id}",
        budget_period=key.budget_period,
        budgeted=key.budget_nusd is not None or key.team is not None,
        own_budget=key.budget_nusd is not None,
        webhook_url=key.webhook_url,
        webhook_signed=key.webhook_secret_encrypted is not None,
    )


class Accounting:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.database_url)
        self.limiter = RateLimiter(settings.rate_limits.storage_url)
        secret = settings.auth.encryption_key
        self.vault = Vault(secret.get_secret_value() if secret else None)
        self._static = [_digest(k.get_secret_value()) for k in settings.auth.api_keys]
        master = settings.auth.master_key
        self._master = _digest(master.get_secret_value()) if master else None
        self.prices = PriceBook.build(catalog.effective(settings.catalog).entries(), settings.pricing)
        self.usage_writer = UsageWriter(self.db)
        self.journal = SettlementJournal(settings.server.data_dir / "pending-settlements.jsonl")
        self._tasks: set[asyncio.Task[None]] = set()
        self._keys_exist = False  # once true, stays true (keys are revoked, never deleted)
        self._keys_checked = float("-inf")
        self.known_keys = keycache.KeyCache(settings.auth.key_cache_seconds)
        self._reading: dict[bytes, asyncio.Future[tuple[Caller, datetime | None] | None]] = {}

    async def start(self) -> None:
        await upgrade_async(self.settings.database_url)
        await self.housekeeping()
        self.usage_writer.start()
        await self._log_auth_mode()

    async def housekeeping(self) -> None:
        """At start and on every sweep: write journaled settlements, then give
        back reservations that expired or whose process is gone."""
        await self.journal.replay(self._apply_journaled)
        await reservations.release_stale(self.db)

    async def flush_usage(self) -> None:
        await self.usage_writer.flush()

    async def aclose(self) -> None:
        if self._tasks:  # settlements of requests whose clients hung up
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.usage_writer.aclose()
        await self.limiter.aclose()
        await self.db.aclose()

    # -- who --------------------------------------------------------------------

    async def _log_auth_mode(self) -> None:
        auth = self.settings.auth
        if auth.required is False:
            log.warning(
                "AUTH IS OFF (auth.required: false): the API serves requests without a key; "
                "keys' rate limits and budgets apply only to requests that send them"
            )
        elif auth.follows_database_keys:
            if await self.keys_required():
                log.info("auth is enforced: API keys exist in the database")
            else:
                log.warning(
                    "auth is not enforced (no auth.api_keys, auth.master_key or database keys): the API accepts "
                    "requests without a key until one is created"
                )

    async def keys_required(self) -> bool:
        """Whether requests must carry a key: the config says so, or (unless
        it says ``required: false``) a key exists in the database. "None yet"
        is cached for KEYS_RECHECK_SECONDS; "some" for good."""
        auth = self.settings.auth
        if not auth.follows_database_keys:
            return auth.enforced
        if self._keys_exist:
            return True
        now = time.monotonic()
        if now - self._keys_checked >= KEYS_RECHECK_SECONDS:
            first, self._keys_checked = self._keys_checked == float("-inf"), now  # others use the cached answer meanwhile
            try:
                async with self.db.read() as session:
                    self._keys_exist = await keys.any_exist(session)
            except Exception as exc:  # the database is down: keep the last answer, ask again later
                log.warning("could not check the database for API keys (%s); asking again later", type(exc).__name__)
            if self._keys_exist and not first:
                log.info("an API key exists in the database now: requests without a key are refused from here on")
        return self._keys_exist

    async def authenticate(self, secret: str | None, virtual_key: str | None = None) -> Caller:
        if not secret:
            if await self.keys_required():
                raise AuthenticationError(
                    "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' or 'x-portkey-api-key'."
                )
            return Caller("anonymous", virtual_key=virtual_key)
        digest = _digest(secret)
        if self._master is not None and hmac.compare_digest(digest, self._master):
            return Caller("master", is_admin=True, virtual_key=virtual_key, identity="master")
        if any(hmac.compare_digest(digest, d) for d in self._static):
            return Caller("static", virtual_key=virtual_key, identity=f"static:{digest.hex()[:24]}")
        if not secret.startswith(keys.SECRET_PREFIX):  # only these can be database keys
            return await self._unknown_key(virtual_key)
        known = self.known_keys.get(digest) or await self._read_key(digest, secret)
        if known is None:
            return await self._unknown_key(virtual_key)
        caller, expires_at = known
        if keycache.expired(expires_at):
            raise AuthenticationError("This API key has expired.", code="expired_api_key")
        return replace(caller, virtual_key=virtual_key) if virtual_key is not None else caller

    async def _read_key(self, digest: bytes, secret: str) -> tuple[Caller, datetime | None] | None:
        """A database key's caller and expiry (None: no such key), read once
        for all the requests that ask at the same time (a burst's first
        requests would otherwise each read the same row); with no cache
        (``key_cache_seconds: 0``), by each request itself."""
        if self.known_keys.ttl <= 0:
            return await self._load_key(digest, secret)
        reading = self._reading.get(digest)
        if reading is None:
            reading = asyncio.ensure_future(self._load_key(digest, secret))
            self._reading[digest] = reading
            reading.add_done_callback(lambda done: self._reading.pop(digest) if self._reading.get(digest) is done else None)
        return await asyncio.shield(reading)

    async def _load_key(self, digest: bytes, secret: str) -> tuple[Caller, datetime | None] | None:
        since = self.known_keys.generation
        async with self.db.read() as session:
            key = await keys.find_by_secret(session, secret)
        if key is None:
            return None
        self._keys_exist = True  # a key exists (made in this process or another): required from now on
        if not key.enabled or key.revoked_at is not None:
            raise AuthenticationError("This API key has been revoked or disabled.", code="invalid_api_key")
        known = _caller_of(key), key.expires_at
        if known[0].budgeted:  # one without a budget is read every time: a budget given to it holds at once
            self.known_keys.put(digest, *known, since=since)
        return known

    async def _unknown_key(self, virtual_key: str | None) -> Caller:
        if await self.keys_required():
            raise AuthenticationError("Incorrect API key provided.")
        return Caller("anonymous", virtual_key=virtual_key)

    def forget_keys(self) -> None:
        """Read every key afresh from the database (its row changed): reads
        under way are not shared with requests that come from now on."""
        self.known_keys.clear()
        self._reading.clear()

    # -- prices -------------------------------------------------------------------

    def price_for(self, public: str, upstream: str, rules: ModelSpec) -> Price | None:
        return self.prices.find(*price_names(public, upstream, rules))

    # -- admission and settlement -------------------------------------------------

    def _price_of(self, request: ImageRequest, deployment: Deployment) -> Price | None:
        return self.price_for(request.model, deployment.model, request.spec)

    async def check_limits(self, caller: Caller, request: ImageRequest, request_id: str) -> None:
        """The key's models and rate limits, before any expensive work on the
        request (fetching or decoding its images); refusals are recorded."""
        if not caller.may_use(request.model):
            raise PermissionDeniedError(f"This key may not use model '{request.model}'.", param="model", code="model_not_allowed")
        if caller.kind != "key" or caller.key_id is None:
            return
        try:
            await self.limiter.admit(caller.key_id, caller.rpm, caller.ipm, request.n)
        except RateLimitError as exc:
            await self.settle(Admission(caller, request, _NO_DEPLOYMENT, request_id, 0), Outcome(status=429, error_code=exc.code))
            raise

    async def admit(
        self,
        caller: Caller,
        request: ImageRequest,
        candidates: list[tuple[ImageRequest, Deployment]],
        request_id: str,
        lifetime_seconds: float,
    ) -> Admission:
        """Reserve the worst case of ``candidates`` (every (request,
        deployment) that may serve it, fallbacks included: the dearest counts)
        for at most ``lifetime_seconds`` (the request's deadline)."""
        admission, wanted = await self.prepare(caller, request, candidates, request_id)
        if wanted is None:
            return admission  # no budget to hold anything against: settlement just charges
        # The reservation is written in a task of its own: a client that hangs
        # up while it commits cancels the request, not the write, and the
        # reservation is then given back as soon as the write has ended.
        write = asyncio.ensure_future(self._reserve(caller, wanted, request_id, lifetime_seconds))
        try:
            held = await asyncio.shield(write)
        except BudgetRefused as no:
            raise await self.refused(admission, no) from None
        except asyncio.CancelledError:
            self._background(self._undo(write, admission))
            raise
        admission.reserved, admission.reservation_id = held.amount, held.id
        return admission

    async def prepare(
        self, caller: Caller, request: ImageRequest, candidates: list[tuple[ImageRequest, Deployment]], request_id: str
    ) -> tuple[Admission, int | None]:
        """Everything of an admission but the reservation: the key's models,
        the prices (an unpriced model refused where a budget applies and
        ``pricing_missing: refuse``), and the worst case to reserve (None:
        the caller has no budget to hold it against). :meth:`admit` reserves
        it in a transaction of its own, :meth:`reserve_in` in the caller's."""
        if not caller.may_use(request.model):
            raise PermissionDeniedError(f"This key may not use model '{request.model}'.", param="model", code="model_not_allowed")
        admission = Admission(caller, request, candidates[0][1], request_id, 0)
        if caller.kind != "key" or caller.key_id is None or not caller.budgeted:
            return admission, None
        prices = [(r, self._price_of(r, d)) for r, d in candidates]
        unpriced = sorted({r.model for r, price in prices if price is None})
        if unpriced and self.settings.pricing_missing == "refuse" and await self._budget_applies(caller):
            await self.settle(admission, Outcome(status=403, error_code="model_not_priced"))
            raise PermissionDeniedError(
                f"Model '{unpriced[0]}' has no price, and this key's budget cannot be kept without one: "
                f"set catalog.{unpriced[0]}.price (or pricing.{unpriced[0]}) in the gateway's config "
                "(or pricing_missing: allow).",
                param="model",
                code="model_not_priced",
            )
        return admission, max(worst_case(price, r) for r, price in prices)

    async def lock_budgets(self, session: AsyncSession, callers: Iterable[Caller]) -> None:
        """Lock the budget rows (keys, then teams, each sorted) that
        :meth:`reserve_in` will change for ``callers``, in the caller's
        transaction: one transaction reserving for several keys takes them in
        the order every other reservation and settlement does."""
        callers = list(callers)
        await budgets.lock(session, (c.key_id for c in callers if c.key_id), (c.team for c in callers if c.team))

    async def reserve_in(
        self, session: AsyncSession, caller: Caller, holds: Sequence[reservations.Hold], now: datetime
    ) -> list[reservations.Held]:
        """Reserve each of ``holds`` (amounts from :meth:`prepare`, each with
        its request id, lifetime, time and owner: a job, ``job:<id>``) on
        ``caller``'s budgets in the caller's transaction, the budgets asked
        once for their sum. Raises :class:`BudgetRefused` (for the sum) when
        a budget says no, having changed nothing; the caller raises
        :meth:`refused`'s error (or, for several, asks for each alone). Admissions are not changed: the
        caller sets ``reserved`` and ``reservation_id`` once its transaction
        committed."""
        assert caller.key_id is not None
        key = (caller.key_id, caller.budget_period, caller.team)
        refused, held = await reservations.hold_many(session, key, holds, now)
        if refused is not None:
            raise BudgetRefused(refused, caller.budget_period, sum(h[0] for h in holds))
        return held

    async def refused(self, admission: Admission, no: BudgetRefused) -> RateLimitError:
        """A budget's refusal, recorded (a 429 usage row); the error to raise."""
        await self.settle(admission, Outcome(status=429, error_code="insufficient_quota"))
        return self._over_budget(no.which, no.period, admission.caller, no.wanted)

    async def _budget_applies(self, caller: Caller) -> bool:
        """Whether the key, or its team, has a budget (asked only for an unpriced model)."""
        if caller.own_budget:
            return True
        if caller.team is None:
            return False
        async with self.db.read() as session:
            team = await session.get(Team, caller.team)
            return team is not None and team.budget_nusd is not None

    async def _reserve(self, caller: Caller, wanted: int, request_id: str, lifetime_seconds: float) -> reservations.Held:
        assert caller.key_id is not None
        key = (caller.key_id, caller.budget_period, caller.team)
        async with self.db.transaction() as session:
            refused, held = await reservations.hold(session, key, wanted, request_id, lifetime_seconds, utcnow())
            if refused is not None:
                raise BudgetRefused(refused, caller.budget_period, wanted)
        return held

    async def _undo(self, write: asyncio.Future[reservations.Held], admission: Admission) -> None:
        try:
            held = await write
        except Exception:
            return  # nothing was reserved
        admission.reserved, admission.reservation_id = held.amount, held.id
        await self.settle(admission, Outcome(status=499, error_code="client_closed_request"))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # a reference, so that it is not collected mid-way
        task.add_done_callback(self._tasks.discard)

    def _over_budget(self, which: str, period: str, caller: Caller, wanted: int) -> RateLimitError:
        nxt = budgets.next_period(period, utcnow()) if which == "key" else None
        retry = (nxt - utcnow()).total_seconds() if nxt else 3600.0
        scope = "this key's" if which == "key" else f"team '{caller.team}''s"
        err = RateLimitError(
            f"This request could cost up to ${usd_str(wanted)}, more than {scope} remaining budget.",
            retry_after=retry,
            code="insufficient_quota",
        )
        err.type = "insufficient_quota"
        return err

    def _stated_cost(self, admission: Admission, price: Price | None, stated: int | None) -> int | None:
        """An upstream's stated cost, held to the catalog's bound: above the
        request's worst case at its price (the reservation's figure) it is
        charged at that bound and logged, so a wrong or hostile number never
        spends more than the price allows; the row keeps the stated figure."""
        if stated is None or price is None:
            return stated
        bound = worst_case(price, admission.request)
        if stated <= bound:
            return stated
        log.error(
            "request %s: the upstream %s stated a cost of %s nano-USD, above the bound of %s its catalog price gives "
            "for this request (model %s): charged the bound; raise the entry's price if the upstream's prices went up",
            admission.request_id, admission.deployment.provider, stated, bound, admission.request.model,
        )  # fmt: skip
        return bound

    async def settle(self, admission: Admission, outcome: Outcome) -> int:
        """Charge and record; returns the cost in nano-dollars. Raises
        ServiceUnavailableError only for a successful request whose charge
        could be neither written nor journaled."""
        request = admission.request
        price = self._price_of(request, admission.deployment)
        delivered = outcome.status < 400 or outcome.images > 0  # a stream may fail after some images
        cost = None
        if delivered:
            stated = self._stated_cost(admission, price, outcome.upstream_cost_nusd)
            cost = actual(price, request, outcome.images, outcome.usage, outcome.meta, stated)
            if stated is not None and stated != outcome.upstream_cost_nusd:
                cost = replace(cost, upstream_cost_nusd=outcome.upstream_cost_nusd)  # the row keeps what was stated
        charged = cost.nusd if cost is not None else 0
        if cost is not None and admission.reservation_id is not None and charged > admission.reserved:
            log.error(
                "request %s cost %s nano-USD, above its reservation of %s: charged in full; key %s is refused "
                "further requests while it is over its budget",
                admission.request_id, charged, admission.reserved, admission.caller.key_id,
            )  # fmt: skip
        caller = admission.caller
        row: dict[str, Any] = dict(
            request_id=admission.request_id,
            created_at=utcnow(),
            key_id=caller.key_id,
            team=caller.team,
            model=request.model,
            provider=admission.deployment.provider or None,
            upstream_model=admission.deployment.model or None,
            endpoint=request.endpoint,
            n=outcome.images,  # the images delivered (and charged); 0 for a failure that delivered none
            size=outcome.meta.size or request.size,
            quality=outcome.meta.quality or request.quality,
            input_text_tokens=cost.input_text_tokens if cost else None,
            input_image_tokens=cost.input_image_tokens if cost else None,
            input_cached_tokens=cost.input_cached_tokens if cost else None,
            upstream_cost_nusd=cost.upstream_cost_nusd if cost else None,
            output_tokens=cost.output_tokens if cost else None,
            output_image_tokens=cost.output_image_tokens if cost else None,
            output_text_tokens=cost.output_text_tokens if cost else None,
            cost_nusd=charged,
            cost_estimated=bool(cost and cost.estimated),
            latency_ms=int((time.monotonic() - admission.started) * 1000),
            status=outcome.status,
            error_code=outcome.error_code,
        )
        if caller.key_id is None and admission.settlement_id is None:  # nothing to settle: the row goes out in the next batch
            self.usage_writer.add(row)
            return charged
        entry: dict[str, Any] = {
            "settlement_id": admission.settlement_id or admission.reservation_id or f"stl_{secrets.token_hex(12)}",
            "reservation_id": admission.reservation_id,
            "key_id": caller.key_id,
            "team": caller.team,
            "charge": charged,
            "row": row,
        }
        for delay in (*SETTLE_RETRY_DELAYS, None):
            try:
                await self._apply(entry)
                return charged
            except IntegrityError:
                if admission.settlement_id is None:
                    raise
                return await self._settled_before(admission.settlement_id)
            except Exception as exc:
                failure = exc
                if delay is not None:
                    await asyncio.sleep(delay)
        log.error("could not write the settlement of request %s (%s): journaling it", admission.request_id, failure)
        try:
            await self.journal.append({**entry, "row": {**row, "created_at": row["created_at"].isoformat()}})
        except OSError as exc:
            log.critical("could not journal the settlement of request %s either (%s): %s", admission.request_id, exc, entry)
            if outcome.status < 400:
                raise ServiceUnavailableError(
                    "The request ran, but its cost could not be recorded (the database and the data directory "
                    "are unavailable), so its result is withheld. Try again later.",
                    code="accounting_unavailable",
                ) from exc
        return charged

    async def _apply(self, entry: dict[str, Any]) -> None:
        """One settlement, in one transaction: give back the reservation (if
        no sweep did already), charge, write the usage row. A caller with no
        key (a job's settlement id without one) only writes the row."""
        async with self.db.transaction() as session:
            if entry["key_id"] is not None:
                await reservations.settle(session, entry["reservation_id"], entry["key_id"], entry["team"], entry["charge"])
            await session.execute(_INSERT_USAGE, {**entry["row"], "settlement_id": entry["settlement_id"]})

    async def _settled_before(self, settlement_id: str) -> int:
        """A settlement applied before (its usage row exists): nothing more is
        charged or released; what it charged then."""
        async with self.db.read() as session:
            charged = (
                await session.execute(select(UsageRecord.cost_nusd).where(UsageRecord.settlement_id == settlement_id))
            ).scalar_one_or_none()
        log.info("settlement %s was already applied: nothing charged again", settlement_id)
        return int(charged or 0)

    async def _apply_journaled(self, entry: dict[str, Any]) -> None:
        row = {**entry["row"], "created_at": datetime.fromisoformat(entry["row"]["created_at"])}
        try:
            await self._apply({**entry, "row": row})
        except IntegrityError:  # its usage row exists: it went through before a crash
            log.info("journaled settlement %s was already applied", entry["settlement_id"])


def outcome_of_error(exc: BaseException) -> Outcome:
    if isinstance(exc, ImagegateError):
        return Outcome(status=exc.status, error_code=exc.code)
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return Outcome(status=499, error_code="client_closed_request")
    return Outcome(status=500, error_code="internal_error")
