"""Stage 4, use: batching, the one batched-inference loop, long-text windows, the frozen-trunk cache,
and the cores of `predict` and `evaluate` (records, metrics, error reports, pictures)."""
