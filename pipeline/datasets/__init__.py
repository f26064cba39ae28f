"""Dataset adapters, one file each, registered by name with one signature:
`(path, IndexConfig) -> IndexResult`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.config import IndexConfig
from pipeline.datasets.dfew import index_dfew
from pipeline.datasets.manifest import index_manifest
from pipeline.datasets.records import IndexResult
from pipeline.errors import LayoutError

__all__ = ["ADAPTERS", "get_adapter", "IndexResult"]

ADAPTERS: dict[str, Callable[[Path, IndexConfig], IndexResult]] = {
    "dfew": index_dfew,
    "manifest": index_manifest,
}


def get_adapter(name: str, path: Path) -> Callable[[Path, IndexConfig], IndexResult]:
    """The adapter `name`; "auto" picks manifest for a .csv/.parquet file, DFEW for a directory."""
    if name == "auto":
        name = "manifest" if Path(path).suffix.lower() in (".csv", ".parquet") else "dfew"
    if name not in ADAPTERS:
        raise LayoutError(f"unknown dataset kind {name!r}; known: {', '.join(ADAPTERS)}")
    return ADAPTERS[name]
