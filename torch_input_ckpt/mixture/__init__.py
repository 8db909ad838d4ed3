"""``Mixture``: map-style datasets mixed by weight: layout, per-source order, plan, and changes on resume."""
