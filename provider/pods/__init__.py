"""The pod side of warmlet: informer (watch), work queue, per-pod sync, controller."""
