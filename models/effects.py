"""Effect handlers that steer the model from outside, as Pyro's ``poutine.scale`` does, instead of attributes a
fit sets on the model.

* :class:`KLWeight`: the weight sites (everything outside the data plate, in the model *and* the guide)
  scaled by ``beta``; ``beta = 0`` masks them (maximum likelihood). The ELBO then reads
  ``E[log p(y | w)] - beta KL(q || p)``.
* :class:`DataSize`: the observations of a minibatch of ``B`` scaled by ``N / B``, as a subsampled
  ``plate("data", N)``.
* :class:`Flipout`: while active, the model's PEFT layers perturb around the guide's means per example.

Example::

    with KLWeight(0.5), DataSize(1000):
        loss = Trace_ELBO().differentiable_loss(model, guide, batch, labels)
"""

from __future__ import annotations

from typing import Callable

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK

__all__ = ["KLWeight", "DataSize", "Flipout", "active_flipout", "DATA_PLATE"]

DATA_PLATE = "data"  # the name of every model's plate over examples


def _in_data_plate(msg: dict) -> bool:
    return any(frame.name == DATA_PLATE for frame in msg["cond_indep_stack"])


class KLWeight(Messenger):
    """Scale (``beta > 0``) or mask (``beta = 0``) every sample site outside the data plate."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = float(beta)

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or self.beta == 1.0 or _in_data_plate(msg):
            return
        if self.beta == 0:  # as poutine.mask(mask=False)
            msg["mask"] = False if msg["mask"] is None else msg["mask"] & False
        else:  # as poutine.scale(scale=beta)
            msg["scale"] = self.beta * msg["scale"]


class DataSize(Messenger):
    """The sites inside the data plate of ``B`` rows weighted by ``num_data / B`` (None: unweighted)."""

    def __init__(self, num_data: int | None) -> None:
        super().__init__()
        self.num_data = num_data

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or self.num_data is None:
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == DATA_PLATE), None)
        if frame is not None:
            msg["scale"] = (self.num_data / frame.size) * msg["scale"]


class Flipout(Messenger):
    """While active, :meth:`BayesianPeftModel.bound` gives each PEFT layer the mean ``locs(site)`` of its random
    tensors (None for a point mass), so the layer draws its noise per example around it (flipout)."""

    def __init__(self, locs: Callable[[str], torch.Tensor | None]) -> None:
        super().__init__()
        self.locs = locs


def active_flipout() -> Callable[[str], torch.Tensor | None] | None:
    """The innermost active :class:`Flipout`'s ``locs``, or None."""
    return next((frame.locs for frame in reversed(_PYRO_STACK) if isinstance(frame, Flipout)), None)
