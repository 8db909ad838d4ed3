"""The ``torch-input-ckpt`` command line: ``inspect``, ``samples`` and ``index``."""
