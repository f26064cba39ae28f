"""midas-prep: DFER videos -> aligned clip shards -> MIDAS mixing -> trainer."""

__version__ = "0.1.0"
