"""Side-by-side comparison of inference schemes: same data, head, steps and seeds for every method.

``pyro-bhpeft compare --task sentiment --seeds 3`` fits every method on the same training subset with
the same budget, scores it on the same test (and out-of-distribution) examples, and writes a table
(mean and standard deviation over seeds), a paired significance test against deterministic LoRA, and
figures. Every (method, seed) cell is saved as soon as it is done, and fits shared between methods
(the deterministic LoRA behind temperature scaling, Laplace and the ensemble) are saved once, so an
interrupted comparison resumes where it stopped.

Methods (LoRA r=8 on query/value, mean pooling and a linear head throughout; K posterior samples):

=================  ===================================================================================
``lora``           deterministic LoRA: a point estimate without prior (maximum likelihood), our ``fit``
``map``            the same point estimate with the N(0, 1) prior (MAP)
``peft-lora``      the same LoRA and head trained through the ``peft`` library (plain cross-entropy)
``mc-dropout``     LoRA trained and predicted with the backbone's dropout on, K passes
``ensemble``       ``ensemble_size`` deterministic LoRAs (seeds s, s+1000, ...), probabilities averaged
``laplace``        post-hoc diagonal-GGN Laplace around ``lora``, prior precision by evidence; the
                   predictive averages K weight samples (sampled, not linearised, predictive)
``laplace-glm``    the same Laplace posterior with the linearised (GLM) predictive of Immer et al. 2021
``temperature``    ``lora`` with a temperature fitted on the validation examples
``mean-field``     BH-PEFT: LoRA + adapter + prefix, mean-field posterior, K samples
``low-rank``       BH-PEFT hybrid with a rank-8 low-rank posterior
``mean-field-lora``  LoRA-only mean-field (what the hybrid adds over Bayesian LoRA)
=================  ===================================================================================

A new method is a ``run(bench, seed) -> Scored`` function and one line,
``register_method("name", Method("description", run, ...))`` (see :mod:`.methods`).

The protocol (:class:`Protocol`) is fixed before anything is fitted and saved with the results; a
comparison directory refuses to resume under a different protocol.

Modules: :mod:`.protocol` (the protocol), :mod:`.bench` (data, shared fits, :class:`Scored`),
:mod:`.methods` (the registry and built-in methods), :mod:`.cells` (one saved (method, seed) cell),
:mod:`.report` (table, paired tests, figures), :mod:`.harness` (:func:`run_compare`).
"""

from .bench import Bench, Scored
from .harness import run_compare
from .methods import DEFAULT_METHODS, METHODS, Method, register_method
from .protocol import OOD_DEFAULTS, Protocol
from .record import refusal
from .report import summarize

__all__ = ["refusal", "Protocol", "METHODS", "DEFAULT_METHODS", "OOD_DEFAULTS", "run_compare", "summarize", "Method",
           "register_method", "Bench", "Scored"]
