"""Data-parallel fits: two gloo ranks on half-batches reach the parameters of one process on whole batches; torchrun
and accelerate launch the command-line fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import reviews, tiny_bert, token_batch

from pyro_bhpeft import LoraConfig, PeftConfig, fit, priors
from pyro_bhpeft.guides import Delta
from pyro_bhpeft.models import SequenceClassifier

N, BATCH = 16, 8


def _batches(rank: int | None):
    """Whole batches (``rank`` None) or rank's half of each."""
    tokens, labels = token_batch(N), torch.arange(N) % 2
    out = []
    for start in range(0, N, BATCH):
        rows = range(start, start + BATCH) if rank is None else range(start + rank * BATCH // 2,
                                                                          start + (rank + 1) * BATCH // 2)
        rows = list(rows)
        out.append(({k: v[rows] for k, v in tokens.items()}, labels[rows]))
    return out


def _map_fit(rank: int | None):
    torch.manual_seed(0)
    model = SequenceClassifier(tiny_bert(), PeftConfig(LoraConfig(r=2)), priors.Normal(1.0), num_labels=2)
    guide = Delta(model)
    fit(model, guide, _batches(rank), num_data=N, epochs=3, lr=1e-2, progress=False, seed=0)
    return {k: v.detach().clone() for k, v in guide.state_dict().items()}


def _rank_main(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        state = _map_fit(rank)
        if rank == 0:
            torch.save(state, os.path.join(folder, "ranks.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_on_half_batches_match_one_process_on_whole_batches(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path),), nprocs=2, join=True)
    two = torch.load(tmp_path / "ranks.pt")
    one = _map_fit(None)
    assert two.keys() == one.keys()
    moved = 0.0
    for name in one:  # gradients averaged over the ranks = the whole batch's; the prior counted once
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
        moved = max(moved, float((one[name] - _start()[name]).abs().max()))
    assert moved > 1e-3  # the fit moved the parameters, so the match is not the starting point's


def _start():
    torch.manual_seed(0)
    model = SequenceClassifier(tiny_bert(), PeftConfig(LoraConfig(r=2)), priors.Normal(1.0), num_labels=2)
    guide = Delta(model)
    fit(model, guide, _batches(None), num_data=N, max_steps=1, lr=0.0, progress=False, seed=0)
    return guide.state_dict()


LAUNCHERS = {  # the two launchers the README names, each starting 2 CPU processes of `pyro_bhpeft fit`
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "29534"],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launched_fit_writes_one_run_that_loads_and_predicts(launcher, tiny_backbone, tmp_path):
    from pyro_bhpeft.cli import main

    train, run = tmp_path / "train.csv", tmp_path / "run"
    reviews(48).to_csv(train, index=False)
    cmd = [*LAUNCHERS[launcher], "-m", "pyro_bhpeft", "fit", "--train", str(train), "--text-column", "review", "--label-column",
           "sentiment", "--backbone", tiny_backbone, "--max-steps", "3", "--batch-size", "8", "--max-length", "16",
           "--device", "cpu", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run saved to") == 1  # only rank 0 reports and writes
    assert json.loads((run / "config.json").read_text())["meta"]["world_size"] == 2
    assert main(["evaluate", str(run), "--split", "test", "--samples", "2", "--device", "cpu"]) == 0
