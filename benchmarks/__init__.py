"""The performance suite of async-rollout: ``python -m benchmarks`` from the repository root.

Every row is a ratio of two candidates measured side by side in the same run
(repetitions interleaved, median of each), so that noise on a shared machine
hits both sides. See ``benchmarks/RESULTS.md`` for the latest full run.
"""
