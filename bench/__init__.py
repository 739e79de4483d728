"""Benchmarks: speed goals measured side by side in one run, never in timed tests.

``python -m bench`` (``make bench``) runs every benchmark, each in its own process, and
writes ``bench/results/report.md`` and ``bench/results/results.csv``; ``--only NAME``
picks some, ``--quick`` shrinks every workload. See :mod:`bench.__main__`.
"""
