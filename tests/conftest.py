import gc


def pytest_collection_finish(session):
    """Move everything imported by collection (torch, transformers, Lightning: ~370k objects) into the permanent
    generation: every full collection (resume.release's gc.collect, the interpreter's own) then skips it, which
    took 0.2-1.3 s each, and DataLoader workers forked afterwards do not touch (copy) those pages when they
    collect. Objects the tests create are collected as before."""
    gc.freeze()
