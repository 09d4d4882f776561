"""Seeded splitting and subsetting of ``datasets.Dataset`` objects, without writing cache files."""

from __future__ import annotations

import datasets
import numpy as np

from .types import DataError

__all__ = ["carve", "subset"]


def carve(ds: datasets.Dataset, fractions: dict[str, float], seed: int, *,
          rest: str = "train", what: str = "the data") -> datasets.DatasetDict:
    """Split ``ds`` by a seeded permutation: each named part gets its fraction, ``rest`` the remainder.

    Every part gets at least one row; the parts keep the original row order.

    Example::

        parts = carve(ds, {"validation": 0.1, "test": 0.1}, seed=0)   # train 80%, validation 10%, test 10%
    """
    n = len(ds)
    sizes = {name: max(1, round(f * n)) for name, f in fractions.items()}
    if n - sum(sizes.values()) < 1:
        raise DataError(f"{what} has {n} rows, too few to carve out {', '.join(fractions)}; "
                        f"give more rows or pass separate evaluation files")
    order = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = ds.select(np.sort(order[start:start + size]))
        start += size
    return datasets.DatasetDict({rest: ds.select(np.sort(order[start:])), **out})


def subset(ds: datasets.Dataset, max_rows: int, seed: int) -> datasets.Dataset:
    """At most ``max_rows`` rows of ``ds``, chosen by ``seed`` (kept in their original order).

    Example::

        small = subset(ds, 100, seed=0)
    """
    if len(ds) <= max_rows:
        return ds
    keep = np.sort(np.random.default_rng(seed).permutation(len(ds))[:max_rows])
    return ds.select(keep)
