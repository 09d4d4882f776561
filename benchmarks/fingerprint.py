"""A fingerprint of small real fits, to check that a change of code leaves the numbers unchanged.

Fits deterministic LoRA, the hybrid mean-field (the demo's recipe until 2026-12-06), the hybrid low-rank posterior and
the recipe ``fit`` takes by default on a classification on 160 random sentiment snippets for 8 steps (packaged
MiniLM, one thread), predicts 48 test snippets with 4 posterior samples (none for a recipe that predicts at its
posterior mean), and writes every loss and a hash of the predictive probabilities as JSON. Run it under two
checkouts and compare the files: equal files mean bit-identical training and prediction.

    python benchmarks/fingerprint.py fingerprint.json          # ~1 minute
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch

from pyro_bhpeft.backbone import load_backbone
from pyro_bhpeft.config import PeftConfig
from pyro_bhpeft.data import load_task, make_loader, tokenize
from pyro_bhpeft.predict import predict
from pyro_bhpeft.recipe import Recipe, kind_recipe, train
from pyro_bhpeft.runs import training_subset

RECIPES = {"lora": Recipe(guide="mle", max_steps=8),
           "bh-peft hybrid mean-field": Recipe(guide="mean-field", peft=PeftConfig.hybrid(), max_steps=8),
           "low-rank": Recipe(guide="low-rank", peft=PeftConfig.hybrid(), max_steps=8),
           # what ``fit`` takes on this classification task when no recipe is named: its entry changes when the
           # default does (KIND_DEFAULTS), by design
           "fit's default": kind_recipe("classification").with_(max_steps=8, epochs=1)}


def main() -> None:
    torch.set_num_threads(1)
    data = training_subset(load_task("sentiment"), 160, seed=0)
    test = type(data)(data.spec, type(data.splits)({"test": data.splits["test"].select(range(48))}))
    loader = make_loader(tokenize(test, load_backbone("minilm").tokenizer, 64)["test"], 64)
    out = {}
    for name, recipe in RECIPES.items():
        result = train(recipe, data, progress=False)
        samples = min(4, recipe.samples)  # 0 where the recipe predicts at its posterior mean
        probs = predict(result.posterior, loader, num_samples=samples, seed=0).probs
        out[name] = {"loss": result.history, "probs_sha256": hashlib.sha256(probs.numpy().tobytes()).hexdigest()}
    with open(sys.argv[1] if len(sys.argv) > 1 else "fingerprint.json", "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
