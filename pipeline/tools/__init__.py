"""Tools beside the pipeline, not stages of it: make-sample's demo dataset."""
