"""`pyro-bhpeft bayesianize`: a LoRA adapter trained with the peft library, on a user's CSV, becomes a run with
uncertainty that evaluate and predict read."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModel

from helpers import reviews
from pyro_bhpeft.cli import main


@pytest.fixture(scope="module")
def adapter(tiny_backbone, tmp_path_factory):
    """A LoRA adapter on the tiny BERT, its B moved off zero as training would (saved by peft itself)."""
    torch.manual_seed(0)
    model = get_peft_model(AutoModel.from_pretrained(tiny_backbone), LoraConfig(r=2, lora_alpha=4,
                                                                               target_modules=["query", "value"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method", ["tfb", "vi"])
def test_bayesianize_a_peft_adapter_on_a_user_csv(adapter, tiny_backbone, tmp_path, method):
    csv = tmp_path / "reviews.csv"
    reviews(40).to_csv(csv, index=False)
    out = tmp_path / "run"
    code = main(["bayesianize", str(adapter), "--backbone", tiny_backbone, "--train", str(csv), "--text-column",
                 "review", "--label-column", "sentiment", "--method", method, "--max-length", "16", "--out", str(out)])
    assert code in (0, None) and (out / "config.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["peft"]["lora"]["r"] == 2 and config["peft"]["lora"]["lora_alpha"] == 4
    if method == "tfb":
        assert config["meta"]["tfb"]["sigma"] > 0
    assert main(["evaluate", str(out), "--samples", "4"]) in (0, None)
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(out), "--samples", "4", "--out", str(preds)]) in (0, None)  # auto: sample here
    import pandas as pd

    rows = pd.read_csv(preds)
    assert len(rows) > 0 and (rows["mutual_information"] > 0).any()


def test_bayesianize_refuses_a_folder_that_is_not_an_adapter(tiny_backbone, tmp_path, capsys):
    csv = tmp_path / "reviews.csv"
    reviews(10).to_csv(csv, index=False)
    code = main(["bayesianize", str(tmp_path), "--backbone", tiny_backbone, "--train", str(csv), "--text-column",
                 "review", "--label-column", "sentiment", "--out", str(tmp_path / "run")])
    assert code == 2 and "not a peft adapter folder" in capsys.readouterr().err
