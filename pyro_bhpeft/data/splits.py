"""Seeded splitting and subsetting of ``datasets.Dataset`` objects, without writing cache files."""

from __future__ import annotations

import datasets
import numpy as np

from .types import DataError

__all__ = ["carve", "random_rows", "DRAWS"]


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


DRAWS = ("choice", "permutation")


def random_rows(ds: datasets.Dataset, n: int, seed: int | None = 0, *, draw: str = "choice") -> datasets.Dataset:
    """``n`` rows of ``ds`` drawn without replacement by ``seed``, kept in their original order (all of
    ``ds`` when ``n`` covers it). Random, not the first rows: a split's order may follow its labels
    (20 Newsgroups is stored class by class).

    ``draw`` names how a seed picks its rows; both are kept so that saved results pick the same rows:

    * ``"choice"`` (default): ``Generator(seed).choice(len(ds), n, replace=False)``. The rows of
      ``--train-size`` (``DataSource.train_size``), the comparison harness, the demo and ``diagnose``.
    * ``"permutation"``: the first ``n`` entries of ``Generator(seed).permutation(len(ds))``. The rows of
      ``load_task(max_examples=n)``, kept so runs saved with ``--max-examples`` reload the data they saw.

    ``seed=None``: the first ``n`` rows (runs saved before subsets were random).

    Example::

        small = random_rows(ds, 100, seed=0)
    """
    if draw not in DRAWS:
        raise ValueError(f"unknown draw {draw!r}; choose one of {', '.join(DRAWS)}")
    if n >= len(ds):
        return ds
    if seed is None:
        return ds.select(range(n))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(ds), size=n, replace=False) if draw == "choice" else rng.permutation(len(ds))[:n]
    return ds.select(np.sort(picked).tolist())
