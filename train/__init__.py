"""midas-train: DFER models trained on midas-prep shards (`python -m train`, `torchrun -m train`)."""
