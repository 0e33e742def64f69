"""heke-bench: throughput of every stage of heke, each measured alone after its outputs are
checked, with the machine it ran on. ``heke-bench --help``; results in ``benchmarks/RESULTS.md``.
"""
