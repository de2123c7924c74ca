"""``seedream``: ByteDance Seedream on Volcengine Ark / BytePlus ModelArk (see ``provider.py``)."""

from imagegate.providers.seedream.provider import SeedreamOptions, SeedreamProvider

__all__ = ["SeedreamOptions", "SeedreamProvider"]
