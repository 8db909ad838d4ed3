"""Hugging Face ``datasets``' private parts: a ``Dataset``'s indices mapping (``Dataset._indices``)."""

from __future__ import annotations

from typing import Any

__all__ = ["DATASETS_TESTED", "hf_dataset_has_indices"]

# `select`, `shuffle`, `filter`, `train_test_split` and `sort` leave the Arrow table as it is and put an
# indices mapping in front of it (`Dataset._indices`, an Arrow table of row numbers, or None): the rows of
# the dataset are then not the rows of its files, in their order. No public attribute says so
# (`cache_files` lists the mapping's own file beside the data's, indistinguishably).
DATASETS_TESTED = "4.7.0"


def hf_dataset_has_indices(dataset: Any) -> bool:
    """Whether ``dataset`` (a ``datasets.Dataset``) reads its rows through an indices mapping.

    Raises:
        UnsupportedVersionError: when the ``datasets`` version found has no ``_indices`` attribute.
    """
    if not hasattr(dataset, "_indices"):
        import datasets

        from . import unsupported

        raise unsupported("datasets", datasets.__version__, "Dataset._indices", DATASETS_TESTED)
    return dataset._indices is not None
