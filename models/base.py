"""The shared Pyro model: a frozen backbone, Bayesian PEFT layers and a Bayesian head.

Generative story, for a batch of ``B`` out of ``N`` examples::

    w_s ~ prior(s)                      for every PEFT and head site s
    f   = head_w(pool(backbone_w(x)))   the frozen backbone with the sampled deltas bound
    y_i ~ likelihood(f_i)               inside plate("data", B)

A fit steers the model from outside with effect handlers (:mod:`.effects`): ``DataSize(N)`` scales the
likelihood by ``N / B``, ``KLWeight(beta)`` the weight sites by ``beta``, ``Flipout`` perturbs per example.
Subclasses define the head's sites, how features become outputs, and the likelihood.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Mapping

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_bhpeft.backbone import freeze
from pyro_bhpeft.guides.common import scoped_guide
from pyro_bhpeft.config import ConfigError, PeftConfig
from pyro_bhpeft.layers import PeftLayer, Site, architecture, inject
from pyro_bhpeft.priors import Normal, Prior

from .effects import DATA_PLATE, active_flipout

__all__ = ["BayesianPeftModel", "POOLINGS", "pool", "default_pooling", "stacked_draws"]

POOLINGS = ("auto", "mean", "cls", "last")
FOLD_ROWS = {"cpu": 32, "default": 256}  # backbone rows per forward when posterior draws are folded (by device)
_BACKBONE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
Batch = Mapping[str, torch.Tensor]


def stacked_draws(draws: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``K`` posterior draws as one tensor per site, stacked on a leading draw dimension (what
    :meth:`BayesianPeftModel.bound` takes with ``samples=K``)."""
    return {name: torch.stack([w[name] for w in draws]) for name in draws[0]}


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden)."""
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    if how == "cls":
        return hidden[:, 0]
    if how == "last":  # last visible token, for left or right padding
        seq = mask.shape[1]
        last = seq - 1 - torch.flip(mask, dims=[1]).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # mean over visible tokens
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def default_pooling(backbone: nn.Module) -> str:
    """The family's pooling from the architecture table: ``last`` visible token for decoders, ``mean`` for
    encoders."""
    return architecture(backbone).pooling


@scoped_guide
class BayesianPeftModel(PyroModule):
    """Base class of :class:`SequenceClassifier`, :class:`MultipleChoice` and :class:`Regressor`.

    The backbone is frozen and its weights never enter Pyro's parameter store: only the PEFT and
    head tensors are random, each a ``pyro.sample`` site named by its module path.
    """

    task: ClassVar[str] = ""  # the task kind this model serves (a key of TASK_KINDS)
    predicts_classes: ClassVar[bool] = True  # outputs are logits over classes (False: a real value)

    def __init__(self, backbone: nn.Module, peft: PeftConfig | None = None, prior: Prior | None = None,
                 *, pooling: str = "auto") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        self.backbone = freeze(backbone)
        self.peft_config = peft if peft is not None else PeftConfig()
        self.prior = prior if prior is not None else Normal(1.0)
        self.pooling = default_pooling(backbone) if pooling == "auto" else pooling
        self.hidden_size = int(backbone.config.hidden_size)
        self.peft_layers: list[PeftLayer] = inject(backbone, self.peft_config)  # plain list: not submodules
        self.flipout_locs: Any = None  # name -> posterior mean: flipout outside a fit (a fit uses effects.Flipout)
        self._layer_sites = [(layer, [(local, f"{layer.path}.{local}") for local in layer.site_specs()])
                             for layer in self.peft_layers]
        self._site_specs = {name: site for layer in self.peft_layers for name, site in layer.sites().items()}
        self._site_specs.update(self.head_sites())

    @classmethod
    def for_task(cls, backbone: nn.Module, peft: PeftConfig | None, prior: Prior | None, spec: Any,
                 targets: torch.Tensor | None = None) -> "BayesianPeftModel":
        """The model for a task ``spec`` (a :class:`~pyro_bhpeft.data.TaskSpec`); regression uses ``targets``."""
        return cls(backbone, peft, prior)

    # ---- what subclasses provide -------------------------------------------------------------
    def head_sites(self) -> dict[str, Site]:
        raise NotImplementedError

    def outputs(self, weights: Mapping[str, torch.Tensor], features: torch.Tensor, batch: Batch) -> Any:
        """Head outputs (logits, or (mean, noise scale)) from pooled features."""
        raise NotImplementedError

    def likelihood(self, outputs: Any, labels: torch.Tensor | None) -> None:
        """The observation statement(s), called inside the data plate."""
        raise NotImplementedError

    def flatten_inputs(self, batch: Batch) -> Batch:
        """Inputs as the backbone sees them (multiple choice folds choices into the batch)."""
        return batch

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments, besides backbone/peft/prior, needed to rebuild this model."""
        return {"pooling": self.pooling}

    # ---- the model ---------------------------------------------------------------------------
    @property
    def sites(self) -> dict[str, Site]:
        """Every random site of the model, in sampling order: PEFT layers first, then the head."""
        return dict(self._site_specs)

    def latent_names(self) -> list[str]:
        """Names of every latent sample site (the sites plus any extra, like a noise scale)."""
        return list(self._site_specs)

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Where a guide starts: LoRA's A random and B zero, adapters as identity, and so on."""
        device = self._device()
        return {name: site.init(site.shape).to(device) for name, site in self._site_specs.items()}

    def sample_weights(self) -> dict[str, torch.Tensor]:
        device = self._device()
        weights = {name: pyro.sample(name, self.site_prior(name).distribution(name, site.shape, device))
                   for name, site in self._site_specs.items()}
        weights.update(self.extra_latents())
        joint = getattr(self.prior, "joint_log_prob", None)  # a prior with correlations across sites
        log_prob = joint(weights) if joint is not None else None
        if log_prob is not None:
            pyro.factor("prior.joint", log_prob)
        return weights

    def prior_model(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The model without its likelihood: the weights drawn from the prior, no forward pass (a KL-only
        ELBO, as BLoB's split step takes)."""
        return self.sample_weights()

    def site_prior(self, name: str) -> Prior:
        """The prior of site ``name``: the model's, unless the site carries its own (the gates of gated LoRA) and
        the model's prior does not know this site by name (a posterior-derived prior does: the next round's)."""
        own = self._site_specs[name].prior
        covers = getattr(self.prior, "covers", None)
        return own if own is not None and not (covers is not None and covers(name)) else self.prior

    def extra_latents(self) -> dict[str, torch.Tensor]:
        """Latent sites besides the PEFT and head weights (e.g. a noise scale); sampled after them."""
        return {}

    def forward(self, batch: Batch, labels: torch.Tensor | None = None) -> Any:
        weights = self.sample_weights()
        out = self.run(weights, batch)
        labels = labels.to(self._device()) if labels is not None else None
        size = next(iter(batch.values())).shape[0]
        with pyro.plate(DATA_PLATE, size=size, subsample=torch.arange(size, device=self._device())):
            self.likelihood(out, labels)  # effects.DataSize scales it to the full data
        return out

    def run(self, weights: Mapping[str, torch.Tensor], batch: Batch) -> Any:
        """Deterministic forward pass with given weights (no Pyro statements)."""
        return self.outputs(weights, self.features(weights, batch), batch)

    def features(self, weights: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The head's input: the backbone with ``weights`` bound, pooled, in float32 (rows as the backbone sees them)."""
        device = self._device()
        flat = {k: v.to(device) for k, v in self.flatten_inputs(batch).items()}
        rows_per_example = next(iter(flat.values())).shape[0] // max(1, next(iter(batch.values())).shape[0])
        with self.bound(weights, group=rows_per_example):
            inputs = {k: v for k, v in flat.items() if k in _BACKBONE_INPUTS}
            hidden = self.backbone(**inputs).last_hidden_state  # (batch, seq, hidden)
            return pool(hidden, flat.get("attention_mask"), self.pooling).float()  # the head in float32

    def run_samples(self, draws: list[Mapping[str, torch.Tensor]], batch: Batch, max_rows: int | None = None
                    ) -> list[Any]:
        """``[run(w, batch) for w in draws]``, with the draws folded into the batch dimension: one backbone
        forward for as many draws as fit in ``max_rows`` backbone rows, each PEFT layer applying its draw to
        its block of rows by a batched matmul. Falls back to one forward per draw when a layer cannot take
        stacked draws (:attr:`PeftLayer.batched_samples`) or flipout is on.

        ``max_rows=None`` takes the device's default, :data:`FOLD_ROWS`: on a CPU folding pays only for small
        batches (``benchmarks/predict_time.py``: 1.5x faster for one example at K = 16; 0.8-0.95x with 64 rows
        per forward, where each forward is already compute-bound), so it folds up to 32 rows there."""
        flat = self.flatten_inputs(batch)
        flat_rows = next(iter(flat.values())).shape[0]
        if max_rows is None:
            max_rows = FOLD_ROWS.get(self._device().type, FOLD_ROWS["default"])
        per_pass = max(1, max_rows // max(1, flat_rows))
        foldable = self._flipout() is None and all(layer.batched_samples for layer in self.peft_layers)
        if not foldable or per_pass == 1 or len(draws) == 1:
            return [self.run(w, batch) for w in draws]
        outs: list[Any] = []
        for start in range(0, len(draws), per_pass):
            chunk = draws[start:start + per_pass]
            outs += self._run_folded(chunk, flat, batch)
        return outs

    def _run_folded(self, draws: list[Mapping[str, torch.Tensor]], flat: Batch, batch: Batch) -> list[Any]:
        """``draws`` in one backbone forward over ``flat`` (``batch`` as the backbone sees it) repeated per draw."""
        k, device = len(draws), self._device()
        flat = {n: v.to(device) for n, v in flat.items() if n in _BACKBONE_INPUTS}
        with self.bound(stacked_draws(draws), samples=k):
            hidden = self.backbone(**{n: v.repeat(k, *([1] * (v.dim() - 1))) for n, v in flat.items()}).last_hidden_state
            return self.folded_outputs(draws, hidden, flat.get("attention_mask"), batch)

    def folded_outputs(self, draws: list[Mapping[str, torch.Tensor]], hidden: torch.Tensor,
                       mask: torch.Tensor | None, batch: Batch) -> list[Any]:
        """Each draw's outputs from the last hidden state of ``K = len(draws)`` stacked copies of the batch's
        rows (``mask``: one copy's attention mask): pooled once, each draw's head on its own rows."""
        k = len(draws)
        rows = hidden.shape[0] // k
        features = pool(hidden, None if mask is None else mask.repeat(k, 1), self.pooling).float()
        return [self.outputs(w, features[i * rows:(i + 1) * rows], batch) for i, w in enumerate(draws)]

    @contextlib.contextmanager
    def bound(self, weights: Mapping[str, torch.Tensor], group: int = 1, samples: int | None = None,
              passes: bool = False):
        """Bind sampled PEFT tensors to their layers for the duration of a forward pass; ``group`` backbone rows
        make one example (the choices of a question), so flipout gives them one perturbation; ``samples=K``:
        the tensors stack ``K`` draws and the rows are ``K`` copies of the batch (:meth:`run_samples`).
        ``passes``: the examples go through the backbone in several passes (the first with one row per example,
        the later ones with ``group`` rows per example, set on the layers between passes), and flipout keeps the
        first pass's perturbation for the later ones."""
        flipout = self._flipout()
        try:
            for layer, names in self._layer_sites:
                mine = {local: weights[full] for local, full in names if full in weights}
                if mine and flipout is not None:  # the means too: flipout perturbs around them
                    locs = {f"{local}:loc": flipout(full) for local, full in names if full in weights}
                    mine.update({k: v for k, v in locs.items() if v is not None})
                    mine["flipout:group"] = group
                    if passes:
                        mine["flipout:signs"] = {}
                layer.bind(mine or None, samples=samples if mine else None)  # no weights given: inactive
            yield
        finally:
            for layer in self.peft_layers:
                layer.bind(None)

    def regroup(self, group: int) -> None:
        """Within :meth:`bound`: the next pass has ``group`` backbone rows per example (flipout's grouping)."""
        for layer in self.peft_layers:
            layer.regroup(group)

    def _flipout(self) -> Any:
        """The guide's means to perturb around: an active :class:`~.effects.Flipout`'s, else ``flipout_locs``."""
        return active_flipout() or self.flipout_locs

    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def dummy_batch(self) -> dict[str, torch.Tensor]:
        """A one-example batch that exercises every site (used to set guides up when loading)."""
        ids = torch.zeros(1, 4, dtype=torch.long, device=self._device())
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def dummy_data(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``(inputs, labels)`` of one example: guides are set up with observed labels."""
        dtype = torch.long if self.predicts_classes else torch.float32
        return self.dummy_batch(), torch.zeros(1, dtype=dtype, device=self._device())
