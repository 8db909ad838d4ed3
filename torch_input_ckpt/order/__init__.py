"""Order computed, not stored: seeded random-access permutations, the cursor over them, exclusion lists."""
