"""The saved state: its schema (versions, key names, typed states, positions) and its JSON encoding."""
