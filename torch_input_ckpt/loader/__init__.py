"""``ResumableSampler`` and ``ResumableDataLoader``: the sampler, the loader and its backends, worker fetches."""
