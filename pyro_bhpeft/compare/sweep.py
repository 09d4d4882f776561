"""A comparison's cells as Ray tasks: locally on N workers, or on a cluster.

Cells that build on one shared fit (``Method.base_fit``: LoRA, temperature scaling, TFB, Laplace and the
ensemble's first member all start from the deterministic LoRA of their seed) run in one task, in order,
so no fit is made twice; other cells are tasks of their own. Each task builds its own :class:`Bench`
(the data subset and tokenisation are deterministic), runs its cells with ``cpus`` threads and writes
them to the same resumable cell files as a sequential run, so the table is the same. A task carries the
records of its methods, so methods registered outside the library (``benchmarks/lab_methods.py``, a user's)
run in the workers too.

    run_compare(protocol, "runs/cmp", workers=2)                   # two single-thread cells at a time
    run_compare(protocol, "runs/cmp", ray_address="auto", gpus=1)  # a running Ray cluster
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from ..config import ConfigError
from .cells import is_done
from .methods import METHODS
from .protocol import Protocol

__all__ = ["cell_groups", "run_on_ray"]


def cell_groups(methods: Sequence[str], seeds: Sequence[int]) -> list[list[tuple[str, int]]]:
    """The (method, seed) cells in tasks: those sharing a seed's base fit together, in method order."""
    groups: dict[Any, list[tuple[str, int]]] = {}
    for method in methods:
        base = METHODS[method].base_fit
        for seed in seeds:
            key = ("fit", seed, json.dumps(dict(base), sort_keys=True, default=repr)) if base is not None \
                else ("own", method, seed)
            groups.setdefault(key, []).append((method, seed))
    return list(groups.values())


def _run_cells(protocol: Protocol, out: str, data: Any, ood: Any, cells: list[tuple[str, int]],
               threads: int, records: dict[str, Any] | None = None) -> list[tuple[str, int]]:
    import torch

    from .bench import Bench
    from .cells import run_cell
    from .record import register_method

    for name, method in (records or {}).items():  # a method the worker's own import did not register
        if name not in METHODS:
            register_method(name, method)
    torch.set_num_threads(threads)
    bench = Bench(protocol, Path(out), data, ood, progress=False)
    for method, seed in cells:
        run_cell(bench, method, seed)
    return cells


def run_on_ray(protocol: Protocol, out: Path, data: Any, ood: Any, methods: Sequence[str], seeds: Sequence[int], *,
               workers: int = 1, address: str | None = None, cpus: int = 1, gpus: float = 0) -> None:
    """Run the missing cells as Ray tasks (each asking for ``cpus`` CPUs and ``gpus`` GPUs): on a local Ray
    with ``workers * cpus`` CPUs, or on the cluster at ``address``."""
    try:
        import ray
    except ImportError:
        raise ConfigError("running cells on workers needs Ray: pip install 'pyro-bhpeft[ray]'") from None
    todo = [[c for c in group if not is_done(out, *c)] for group in cell_groups(methods, seeds)]
    todo = [group for group in todo if group]
    if not todo:
        return
    started = not ray.is_initialized()
    if started:
        options = {"address": address} if address else {"num_cpus": workers * cpus, "num_gpus": gpus * workers}
        ray.init(include_dashboard=False, log_to_driver=False, **options)
    try:
        task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_run_cells)
        pending = [task.remote(protocol, str(out), data, ood, group, cpus, {m: METHODS[m] for m, _ in group})
                   for group in todo]
        total, finished = sum(len(g) for g in todo), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for cells in ray.get(ready):  # a failed task raises here, with its worker's error
                finished += len(cells)
                names = ", ".join(f"{m}-seed{s}" for m, s in cells)
                print(f"compare: {finished}/{total} cells done ({names})", file=sys.stderr, flush=True)
    finally:
        if started:
            ray.shutdown()
