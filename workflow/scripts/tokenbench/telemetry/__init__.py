"""Hardware telemetry: the sampler process, hardware peaks, and the merge onto requests."""
