"""Per-sample randomness: which global RNGs a sample draws from, which get seeded, and reseeded iterables."""
