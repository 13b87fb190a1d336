"""upm benchmarks: each module measures a hot path beside its raw ceiling in the same run."""
