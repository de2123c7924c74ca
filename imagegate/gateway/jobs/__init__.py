"""Asynchronous image jobs: ``Prefer: respond-async`` (docs/jobs.md).

* :mod:`~imagegate.gateway.jobs.view` - the job object as the API renders it
  (:class:`JobView`), and the hooks other packages plug in (a listener called
  when a job finishes, the webhook URL check);
* :mod:`~imagegate.gateway.jobs.codec` - a typed request to its stored form and back;
* :mod:`~imagegate.gateway.jobs.store` - the SQL (claims, leases, fenced state changes);
* :mod:`~imagegate.gateway.jobs.worker` - the claim / lease / heartbeat loop of a replica;
* :mod:`~imagegate.gateway.jobs.execute` - one claimed job run to its end, settled exactly once;
* :mod:`~imagegate.gateway.jobs.service` - submit, get, list, cancel (what the API calls).
"""
