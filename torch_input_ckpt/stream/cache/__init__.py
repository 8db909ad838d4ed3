"""The node-local shard cache: downloads published atomically, shared through file locks, evicted by next use."""

from .cache import POLICIES, ObjectRef, ShardCache

__all__ = ["POLICIES", "ObjectRef", "ShardCache"]
