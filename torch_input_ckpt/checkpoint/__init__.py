"""``InputCheckpointer``: saving and restoring the input pipeline's state, its collectives, external parts."""
