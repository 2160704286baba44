"""Benchmarks: speed and peak memory of the engine beside nnU-Net's KiTS19 network, on one machine.

``python -m benchmarks.run`` builds synthetic CTs with the geometry of real KiTS19 cases, runs the
engine's command line and the reference on each in fresh processes, and writes a markdown table and
a JSON file to ``benchmarks/results/``. Benchmarks measure; the tests only check that this harness
runs and writes well-formed results.
"""
