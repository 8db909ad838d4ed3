"""``ShardedStream``: samples read from shard files: shards and their index, formats, readers, lanes, packing."""
