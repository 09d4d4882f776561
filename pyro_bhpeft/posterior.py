"""A fitted posterior: the model, its guide, and everything needed to save, reload and sample it.

Saved as a directory of JSON and safetensors (no pickle)::

    config.json          model class and arguments, backbone name, PEFT config, prior, guide
    guide.safetensors    the guide's parameters
    prior.safetensors    tensors of a posterior-derived prior (only when the prior has any)

Example::

    result = fit(model, guide, loader)
    result.posterior.save("runs/sst")
    posterior = Posterior.load("runs/sst")        # same predictions, no retraining
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from safetensors.torch import load_file, save_file

from .config import PeftConfig
from .io import atomic_dir, write_json
from .priors import prior_from_dict

__all__ = ["Posterior", "SiteMarginal", "PosteriorError", "FORMAT", "is_run", "read_config", "check_sizes"]

FORMAT = "pyro-bhpeft/1"


class PosteriorError(ValueError):
    """A saved posterior is missing or unreadable."""


@dataclass(frozen=True)
class SiteMarginal:
    """The marginal posterior of one site: ``loc`` and ``scale`` (None for a point mass)."""

    loc: torch.Tensor
    scale: torch.Tensor | None


class Posterior:
    """A model and its fitted guide. ``meta`` holds free-form JSON facts (task, data, lineage)."""

    def __init__(self, model: Any, guide: Any, *, backbone_name: str | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        self.model, self.guide = model, guide
        self.backbone_name = backbone_name
        self.meta = dict(meta or {})
        if getattr(guide, "prototype_trace", True) is None:  # an autoguide that has not run yet
            with torch.no_grad(), poutine.block():
                guide(*model.dummy_data())

    @property
    def latent_names(self) -> list[str]:
        return self.model.latent_names()

    @torch.no_grad()
    def sample(self, num_samples: int, *, seed: int | None = None) -> list[dict[str, torch.Tensor]]:
        """``num_samples`` joint draws of every latent site from the guide."""
        if seed is not None:
            pyro.set_rng_seed(seed)
        names, data, draws = self.latent_names, self.model.dummy_data(), []
        for _ in range(num_samples):
            with poutine.block():
                trace = poutine.trace(self.guide).get_trace(*data)
            draws.append({n: trace.nodes[n]["value"].detach() for n in names})
        return draws

    @torch.no_grad()
    def mean(self) -> dict[str, torch.Tensor]:
        """The guide's central weights (its ``median``): the mean-only prediction uses these."""
        if not hasattr(self.guide, "median"):
            raise PosteriorError(f"{type(self.guide).__name__} has no median(); predict with num_samples > 0")
        return {n: v.detach() for n, v in self.guide.median(*self.model.dummy_data()).items()}

    def marginals(self) -> dict[str, SiteMarginal]:
        """Per-site loc and scale (exact for our guides; Monte Carlo for others)."""
        if hasattr(self.guide, "marginals"):
            return {n: SiteMarginal(loc, scale) for n, (loc, scale) in self.guide.marginals().items()}
        draws = self.sample(200)
        return {n: SiteMarginal(torch.stack([d[n] for d in draws]).mean(0),
                                torch.stack([d[n] for d in draws]).std(0)) for n in self.latent_names}

    # ---- persistence -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        from pyro_bhpeft.backbone import dtype_name
        from pyro_bhpeft.guides import guide_config

        m = self.model
        dtype = next(m.backbone.parameters()).dtype
        precision = {} if dtype == torch.float32 else {"dtype": dtype_name(dtype)}
        return {"format": FORMAT, "backbone": self.backbone_name or _name_or_path(m.backbone), **precision,
                "task": getattr(m, "task", "") or None,
                "model": {"class": type(m).__name__, "kwargs": m.model_kwargs()},
                "peft": m.peft_config.to_dict(), "prior": m.prior.to_dict(),
                "guide": guide_config(self.guide), "meta": self.meta}

    def write_to(self, directory: str | Path) -> None:
        """Write the posterior files into an existing directory (see :meth:`save` for atomicity)."""
        directory = Path(directory)
        config = self.config()  # fails early for guides we cannot rebuild
        state = {k: v.detach().cpu().contiguous() for k, v in self.guide.state_dict().items()}
        save_file(state, str(directory / "guide.safetensors"))
        prior_tensors = {k: v.contiguous() for k, v in self.model.prior.tensors().items()}
        if prior_tensors:
            save_file(prior_tensors, str(directory / "prior.safetensors"))
        write_json(directory / "config.json", config)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save atomically to the directory ``path``; refuses an existing one unless ``overwrite``."""
        with atomic_dir(path, overwrite=overwrite, replaceable=is_run) as stage:
            self.write_to(stage)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, backbone: torch.nn.Module | None = None,
             device: str | torch.device | None = None) -> "Posterior":
        """Rebuild model and guide from ``path`` (on ``device``; default the CPU); ``backbone`` overrides the
        recorded one (loaded in the recorded precision)."""
        from pyro_bhpeft.backbone import DTYPES, load_backbone, resolve_device
        from pyro_bhpeft.guides import guide_class
        from pyro_bhpeft.models import model_class

        config = read_config(path)
        path = Path(path)
        check_sizes(path, config)  # before the config's sizes allocate anything
        tensors = load_file(str(path / "prior.safetensors")) if (path / "prior.safetensors").exists() else {}
        prior = prior_from_dict(config["prior"], tensors)
        if backbone is None:
            if not config.get("backbone"):
                raise PosteriorError(f"{path} does not record its backbone; pass backbone= to Posterior.load")
            backbone = load_backbone(config["backbone"], dtype=DTYPES[config.get("dtype", "float32")]).model
        model = model_class(config["model"]["class"])(backbone, PeftConfig.from_dict(config["peft"]), prior,
                                                       **config["model"]["kwargs"])
        if device is not None:
            model.to(resolve_device(device))
        guide = guide_class(config["guide"]["class"]).from_config(model, config["guide"]["kwargs"])
        with torch.no_grad(), poutine.block():
            guide(*model.dummy_data())
        try:
            guide.load_state_dict(load_file(str(path / "guide.safetensors")))
        except Exception as err:  # truncated file, wrong shapes, missing tensors
            raise PosteriorError(f"{path / 'guide.safetensors'} is corrupt or does not match its config.json "
                                 f"({type(err).__name__}); refit, or restore the run directory") from None
        return cls(model, guide, backbone_name=config.get("backbone"), meta=config.get("meta"))


SIZE_KEYS = ("num_labels", "num_choices", "rank", "r", "bottleneck", "length")  # config entries that size tensors


def _name_or_path(backbone: Any) -> str | None:
    """The hub id or folder a Hugging Face backbone was loaded from (None for one built from a config)."""
    name = getattr(getattr(backbone, "config", None), "_name_or_path", "") or ""
    return name or None


def _sizes(value: Any, where: str = ""):
    """``(where, value)`` of every :data:`SIZE_KEYS` entry nested in ``value``."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in SIZE_KEYS and inner is not None:
                yield f"{where}{key}", inner
            else:
                yield from _sizes(inner, f"{where}{key}.")


def check_sizes(path: str | Path, config: dict[str, Any]) -> None:
    """Refuse a config whose sizes (classes, ranks, widths) are not whole numbers within the dimensions of the
    tensors ``guide.safetensors`` holds, read from its header: no tensor is built from a number nothing backs."""
    from .safe_state import StateError, tensor_shapes

    file = Path(path) / "guide.safetensors"
    try:
        shapes = tensor_shapes(file)
    except StateError as err:
        raise PosteriorError(f"{err}; refit, or restore the run directory") from None
    largest = max((d for shape in shapes.values() for d in shape), default=0)
    parts = {k: config.get(k) for k in ("model", "guide", "peft")}
    for where, value in _sizes(parts):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= largest:
            raise PosteriorError(f"{Path(path) / 'config.json'}: {where} = {value!r} is not backed by "
                                 f"guide.safetensors (largest dimension {largest}); the run is corrupt or was edited: "
                                 "refit, or restore it")


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a directory a posterior was saved to (its ``config.json`` carries our format marker):
    the only directories ``overwrite`` replaces."""
    try:
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_config(path: str | Path) -> dict[str, Any]:
    """The saved ``config.json`` of a posterior directory, checked."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise PosteriorError(f"{path} holds no saved posterior (config.json is missing); "
                             "point to a directory written by fit or Posterior.save")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PosteriorError(f"{file} is corrupt ({err}); refit, or restore the run directory") from None
    if config.get("format") != FORMAT or not (Path(path) / "guide.safetensors").is_file():
        raise PosteriorError(f"{path} is not a complete {FORMAT} posterior (format or guide.safetensors missing)")
    return config
