"""Objects in S3 and S3-compatible stores, by URL: listing, range reads, atomic downloads, conditional writes.

The layer right above ``base``: the stream reads shards through it, the checkpointer writes through it. Failures
are worded here once: transient ones retried within a bound, the rest refused naming the URL and the fix.
"""

from .retry import RetryPolicy
from .store import ObjectInfo, ObjectStore
from .urls import is_url

__all__ = ["ObjectInfo", "ObjectStore", "RetryPolicy", "is_url"]
