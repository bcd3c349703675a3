"""``python -m bench``: the fan-out benchmark (baselines, the worker, latency) on loopback."""
