"""Walk-forward direction models: causal features, purged splits, honest metrics, two-stage training."""
