"""The node-local shard cache: downloads published atomically, shared through file locks, evicted by next use."""

from .cache import POLICIES, LocalObject, ObjectRef, ShardCache, StoreDownload, copy_file, local_object

__all__ = ["POLICIES", "LocalObject", "ObjectRef", "ShardCache", "StoreDownload", "copy_file", "local_object"]
