"""The engine: the probe set, the evaluation and what every analysis runs on (guard, batching, registries, checks, seeds, layers, pass counts)."""
