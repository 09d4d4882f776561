"""Experiment-only comparison methods: ablations that committed comparisons used, registered on import.

They are not methods a user would pick, so the library's registry leaves them out; whatever summarises or
extends a committed comparison that has their cells imports this module first (``benchmarks/resummarise.py``,
``select_recipes.py``, ``ivon_probe.py``). Each is listed right after the method it varies.

* ``blob-mean``: the blob fit predicting with its posterior mean (K = 0);
* ``mean-field-lora-mean``: fit's default (``mean-field-lora``) predicting with its posterior mean (K = 0);
* ``ivon-ess-n``: IVON with ess = the training-set size and ivon-opt's defaults, our first setting;
* ``lora-gates-nonoise``: the first gated LoRA, without the hard concrete's relaxation noise.

To run the command line with them (e.g. to extend a committed comparison)::

    python benchmarks/lab_methods.py compare --task boolq --methods lora,blob-mean --out docs/compare/boolq
"""

from __future__ import annotations

import sys
from typing import Any

from pyro_bhpeft.compare import METHODS, Method, register_method
from pyro_bhpeft.compare.methods import gates_method, ivon_method
from pyro_bhpeft.config import PeftConfig
from pyro_bhpeft.layers.gates import GatedLoraConfig
from pyro_bhpeft.recipe import PRESETS


def ivon_ess_n(bench: Any) -> dict[str, Any]:
    """IVON's settings with ess = the training-set size (ivon-opt's defaults otherwise)."""
    return {"ess": bench.num_train, "hess_init": 3e-4, "rescale_lr": True, "weight_decay": 1e-4}


LAB_METHODS: dict[str, tuple[str, Method]] = {  # name -> (the method it follows, the method)
    "blob-mean": ("bayes-lora-fs-mean", Method.sampled(
        "the blob fit predicting with its posterior mean (K = 0): how much of BLoB's calibration is its mean "
        "function's", dict(PRESETS["blob"]), point_mass=True)),
    "mean-field-lora-mean": ("mean-field-lora", Method.sampled(
        "the mean-field-lora fit predicting with its posterior mean (K = 0): how much of fit's default is its mean "
        "function's", {"guide": "mean-field"}, point_mass=True)),
    "ivon-ess-n": ("ivon", ivon_method(
        "IVON with ess = the training-set size and ivon-opt's defaults (lr rescaling, weight decay 1e-4): our "
        "earlier setting, not the authors'", ivon_ess_n)),
    "lora-gates-nonoise": ("lora-gates", gates_method(  # the first version (no relaxation noise), kept to compare
        {"peft": PeftConfig(lora=None, **{"gated-lora": GatedLoraConfig(noise="none", rank_prior=-1.0)})})),
}

for _name, (_after, _method) in LAB_METHODS.items():
    if _name not in METHODS:
        register_method(_name, _method, after=_after)


if __name__ == "__main__":
    from pyro_bhpeft.cli import main

    sys.exit(main(sys.argv[1:]))
