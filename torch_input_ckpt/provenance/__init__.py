"""Which samples a step held, and at which steps a sample was delivered, computed from saved states."""
