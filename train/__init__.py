"""midas-train: DFER models trained on midas-prep shards (`midas-train`, `torchrun --no-python midas-train`)."""
