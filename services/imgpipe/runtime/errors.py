"""The two failures a handler can signal to the consume loop; anything else it raises counts as transient.

Kept apart from the loop so that stage work, the object store and the projector can name them without
importing the loop (and Kafka) itself.
"""

from __future__ import annotations


class PoisonMessage(Exception):
    """The message can never be processed (undecodable, invalid): dead-letter it now."""


class TransientError(Exception):
    """A dependency failed; the same message may succeed later. Retried through the tiers."""
