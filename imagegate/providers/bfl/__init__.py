"""``bfl``: Black Forest Labs' API on the job engine (see ``provider.py``)."""

from imagegate.providers.bfl.provider import BFLOptions, BFLProvider

__all__ = ["BFLOptions", "BFLProvider"]
