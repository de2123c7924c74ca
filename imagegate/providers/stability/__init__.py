"""``stability``: Stability AI's REST v2beta Stable Image API (see ``provider.py``)."""

from imagegate.providers.stability.provider import StabilityOptions, StabilityProvider

__all__ = ["StabilityOptions", "StabilityProvider"]
