"""One-off studies: each measured one question once (a fast mode's cost, a backend option)
and its result is quoted in the README or committed under reports/; README.md here indexes
them. ``sdrt bench`` (the harness in sdrt.benchmarks) is the benchmark users run."""
