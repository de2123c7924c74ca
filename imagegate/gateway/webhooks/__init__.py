"""Signed webhooks for asynchronous image jobs (docs/webhooks.md).

* :mod:`~imagegate.gateway.webhooks.urls` - which URLs may receive them (the
  image fetcher's address rules, ``webhooks.allowed_hosts`` for a per-request one);
* :mod:`~imagegate.gateway.webhooks.sign` - Standard Webhooks headers and signatures;
* :mod:`~imagegate.gateway.webhooks.payload` - the body: the job object without image bytes;
* :mod:`~imagegate.gateway.webhooks.outbox` - the SQL of the durable delivery outbox;
* :mod:`~imagegate.gateway.webhooks.deliver` - a replica's delivery loop (attempts, backoff);
* :mod:`~imagegate.gateway.webhooks.service` - :class:`Webhooks`, the hooks the jobs core calls.

A key's secret lives with the key: :mod:`imagegate.accounting.webhook_keys`.
"""
