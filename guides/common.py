"""What every guide of ours shares: starting where the model says, and checking its sites."""

from __future__ import annotations

import functools
from typing import Any, Callable

import pyro
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide.initialization import init_to_median

__all__ = ["model_init", "check_global_real", "local_params", "scoped_guide"]


def model_init(model: Any) -> Callable[[dict], torch.Tensor]:
    """An ``init_loc_fn`` that starts each site at ``model.initial_values()`` (drawn lazily, once)."""
    cache: dict[str, torch.Tensor] = {}

    def init(site: dict) -> torch.Tensor:
        if not cache and hasattr(model, "initial_values"):
            cache.update(model.initial_values())
        value = cache.get(site["name"])
        return value if value is not None else init_to_median(site)

    return init


def check_global_real(site: dict, guide: str) -> None:
    """A one-line error unless ``site`` is real-valued and outside every plate."""
    if site["fn"].support is not constraints.real and not isinstance(site["fn"].support, constraints.independent):
        raise ValueError(f"{guide} needs real-valued sites, but {site['name']!r} has support {site['fn'].support}; "
                         "reparameterise it (e.g. sample a log-scale) or use a Pyro autoguide")
    if site["cond_indep_stack"]:
        raise ValueError(f"{guide} handles global sites only; {site['name']!r} sits inside a plate")


def local_params(fn: Callable) -> Callable:
    """Run ``fn`` with Pyro's ``module_local_params`` on: guide parameters live in their modules, never in
    Pyro's global parameter store, so two guides never share state. Scoped to the call: importing the
    library changes nothing for other Pyro code in the process."""
    @functools.wraps(fn)
    def scoped(*args, **kwargs):
        if pyro.settings.get("module_local_params"):  # already inside a scoped call: no second context
            return fn(*args, **kwargs)
        with pyro.settings.context(module_local_params=True):
            return fn(*args, **kwargs)

    return scoped


_SCOPED = ("__init__", "__call__", "__getattr__", "__setattr__", "forward", "median", "quantiles", "marginals", "get_posterior",
           "_setup_prototype", "_loc_scale", "low_rank", "loc", "scale", "site_loc", "prior_model", "load_state_dict")


def scoped_guide(cls: type) -> type:
    """Class decorator: ``cls`` is built, called and read under :func:`local_params` (a PyroModule must be
    used in the parameter mode it was built in)."""
    for name in _SCOPED:
        fn = cls.__dict__.get(name) or getattr(cls, name, None)
        if callable(fn):
            setattr(cls, name, local_params(fn))
    return cls
