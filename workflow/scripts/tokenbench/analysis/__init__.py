"""Statistics: the metric registry, per-phase metrics, summaries and fits."""
