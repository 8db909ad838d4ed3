"""Benchmarks: this project side by side with torch's DataLoader and torchdata's StatefulDataLoader.

Run ``python -m benchmarks`` (full, ~10 min on 2 cores) or ``python -m benchmarks --quick`` (CI smoke,
under a minute). Every measurement runs in a fresh interpreter (see :mod:`benchmarks.harness`), and the
tables are written to ``benchmarks/results.md``.
"""
