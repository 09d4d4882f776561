"""Causal-LM multiple choice by answer tokens: prompts, letter tokens, left padding, the sliced head, and
every PEFT kind and guide on a tiny random Llama with a real byte-level BPE tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import LABELS, quiz, save_tiny_causal_lm
from transformers import AutoModelForCausalLM

from pyro_bhpeft.backbone import PACKAGED_MODELS, dequantised_dir, has_dropout, load_backbone
from pyro_bhpeft.baselines import mc_dropout_predict
from pyro_bhpeft.config import AdapterConfig, ConfigError, LoraConfig, PeftConfig, PrefixConfig
from pyro_bhpeft.data import DataError, load_task, make_loader, tokenize
from pyro_bhpeft.data.prompts import PROMPT_STYLES, answer_token_ids, for_backbone, prompt_style
from pyro_bhpeft.infer import lr_factor
from pyro_bhpeft.models import AnswerChoice
from pyro_bhpeft.layers.lora import LoraLinear
from pyro_bhpeft.layers.gates import GatedLoraConfig
from pyro_bhpeft.posterior import Posterior
from pyro_bhpeft.predict import predict
from pyro_bhpeft.recipe import Recipe, build_model, train

@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture
def lm(lm_dir):
    return load_backbone(lm_dir)


def test_prompt_lists_choices_under_letters_and_ends_in_answer():
    assert PROMPT_STYLES["default"].prompt(" Which is a metal? ", ["iron", "oak"]) == \
        "Question: Which is a metal?\nA) iron\nB) oak\nAnswer:"
    assert prompt_style("arc-easy").answer_strings(4) == (" A", " B", " C", " D")
    assert prompt_style("winogrande-s") is PROMPT_STYLES["winogrande"]  # by the name before the first "-"


def test_boolq_prompt_maps_yes_to_true_and_refuses_other_choices():
    style = prompt_style("boolq")
    assert style.prompt("The sky is blue.\nis the sky blue?", ["yes", "no"]) == "The sky is blue.\nis the sky blue?\nAnswer:"
    assert style.answer_strings(2) == (" true", " false")  # choice 0 (yes) is " true": labels not inverted
    with pytest.raises(DataError, match="maps answers to"):
        style.prompt("q", ["no", "yes"])


def test_answers_must_each_be_one_token(lm):
    ids = answer_token_ids(lm.tokenizer, [" A", " B", " true", " false"])
    assert [lm.tokenizer.decode([i]) for i in ids] == [" A", " B", " true", " false"]
    with pytest.raises(DataError, match="'Question: A' is 3 tokens"):
        answer_token_ids(lm.tokenizer, [" A", "Question: A"])


def test_for_backbone_turns_multiple_choice_on_a_decoder_into_answer_tokens(lm):
    data = for_backbone(quiz(), lm.model, lm.tokenizer)
    assert data.spec.kind == "answer_choice" and data.spec.label_names == (" A", " B", " C")
    assert data.spec.answer_ids == answer_token_ids(lm.tokenizer, [" A", " B", " C"])
    assert for_backbone(data, lm.model, lm.tokenizer) is data  # idempotent
    from helpers import tiny_bert

    assert for_backbone(quiz(), tiny_bert(), lm.tokenizer).spec.kind == "multiple_choice"  # encoders keep pairs


def test_prompts_are_left_padded_and_cut_from_the_left(lm):
    data = for_backbone(quiz(), lm.model, lm.tokenizer)
    answer_tail = lm.tokenizer("\nAnswer:")["input_ids"]
    for length in (64, 12):  # 12 tokens is shorter than every prompt: the start is cut, "Answer:" stays
        row = tokenize(data, lm.tokenizer, length)["train"][0]
        ids, mask = row["input_ids"], row["attention_mask"]
        assert ids.shape == (length,) and ids[-len(answer_tail):].tolist() == answer_tail
        visible = int(mask.sum())
        assert mask[length - visible:].all() and not mask[:length - visible].any()  # zeros only on the left
        assert (ids[:length - visible] == lm.tokenizer.pad_token_id).all()
    assert int(tokenize(data, lm.tokenizer, 12)["train"][0]["attention_mask"].sum()) == 12


def test_head_is_the_lm_heads_answer_rows_at_the_last_token(lm_dir, lm):
    """At initialisation the model's logits are the full LM's next-token logits at the answers' ids."""
    data = for_backbone(quiz(), lm.model, lm.tokenizer)
    model = build_model(Recipe(backbone=lm_dir), data.spec, lm.model)
    inputs, _ = next(iter(make_loader(tokenize(data, lm.tokenizer, 40)["train"], 4)))
    full = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    with torch.no_grad():
        ours = model.run(model.initial_values(), inputs)
        theirs = full(**inputs).logits[:, -1, list(data.spec.answer_ids)]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert model.answer_weight.shape == (3, 32)
    assert model.answer_weight.data_ptr() != lm.model.lm_head.weight.data_ptr()  # a copy: untied


def test_left_padding_does_not_change_the_score(lm):
    """A prompt scored alone, and padded beside a longer one, gets the same logits (RoPE is relative)."""
    data = for_backbone(quiz(), lm.model, lm.tokenizer)
    model = AnswerChoice(lm.model, PeftConfig(), answer_ids=data.spec.answer_ids)
    weights = {k: v + 0.1 * torch.randn_like(v) for k, v in model.initial_values().items()}
    tokens = tokenize(data, lm.tokenizer, 48)["train"]
    batch, _ = next(iter(make_loader(tokens, 4)))
    short = int(batch["attention_mask"].sum(1).argmin())
    visible = int(batch["attention_mask"][short].sum())
    alone = {k: v[short:short + 1, -visible:] for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(model.run(weights, alone)[0], model.run(weights, batch)[short], atol=1e-5, rtol=1e-4)


def test_peft_lora_scores_answer_letters_as_our_answer_choice_does(lm_dir, lm):
    """The peers' LoRA (peft) on a decoder: its head starts as the LM head's answer rows, and with the same
    non-zero LoRA weights and head change it gives our AnswerChoice's logits."""
    pytest.importorskip("peft")
    from pyro_bhpeft.baselines import PeftLoraModel, peft_predict
    from pyro_bhpeft.config import LoraConfig

    data = for_backbone(quiz(), lm.model, lm.tokenizer)
    lora = LoraConfig(r=2, target_modules=("q_proj", "v_proj"))
    ours = AnswerChoice(lm.model, PeftConfig(lora=lora), answer_ids=data.spec.answer_ids)
    theirs = PeftLoraModel(load_backbone(lm_dir).model, lora, None, "last", answer_ids=data.spec.answer_ids)
    torch.testing.assert_close(theirs.head.weight, ours.answer_weight)  # the pretrained scoring at the start
    g = torch.Generator().manual_seed(0)
    weights = {n: 0.3 * torch.randn(v.shape, generator=g) for n, v in ours.initial_values().items()}
    params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            if name.startswith("head."):
                params[name].copy_(value + (ours.answer_weight if name == "head.weight" else 0))
            else:
                params[f"body.base_model.model.{name}.default.weight"].copy_(value)
    loader = make_loader(tokenize(data, lm.tokenizer, 40)["test"], 4)
    expected = torch.cat([ours.run(weights, inputs).softmax(-1) for inputs, _ in loader]).detach()
    torch.testing.assert_close(peft_predict(theirs, loader).probs, expected, rtol=1e-4, atol=1e-5)


def test_a_tied_lm_head_falls_back_to_the_embeddings(tmp_path):
    backbone = load_backbone(save_tiny_causal_lm(tmp_path, tied=True)).model
    model = AnswerChoice(backbone, PeftConfig(), answer_ids=(5, 7))
    torch.testing.assert_close(model.answer_weight, backbone.get_input_embeddings().weight[[5, 7]])


@pytest.mark.parametrize("peft,guide", [
    (PeftConfig(), "mle"), (PeftConfig(), "mean-field"), (PeftConfig(), "low-rank"),
    (PeftConfig(lora=None, adapter=AdapterConfig(bottleneck=4)), "map"),
    (PeftConfig(lora=None, prefix=PrefixConfig(length=2)), "mean-field"), (PeftConfig.hybrid(), "mean-field"),
    (PeftConfig(lora=None, **{"gated-lora": GatedLoraConfig(r=2)}), "mean-field")])
def test_every_peft_kind_and_guide_fits_and_round_trips(lm_dir, lm, tmp_path, peft, guide):
    recipe = Recipe(backbone=lm_dir, peft=peft, guide=guide, max_steps=3, batch_size=2, max_length=40, lr=1e-2)
    result = train(recipe, quiz(), backbone=lm, progress=False)
    assert all(torch.isfinite(torch.tensor(result.history)))
    result.posterior.save(tmp_path / "run")
    loaded = Posterior.load(tmp_path / "run")
    data = for_backbone(quiz(), loaded.model.backbone, lm.tokenizer)
    loader = make_loader(tokenize(data, lm.tokenizer, 40)["test"], 4)
    a, b = predict(result.posterior, loader, num_samples=2, seed=0), predict(loaded, loader, num_samples=2, seed=0)
    torch.testing.assert_close(torch.as_tensor(a.probs), torch.as_tensor(b.probs))
    assert a.probs.shape[-1] == 3
    looped = predict(loaded, loader, num_samples=2, seed=0, max_rows=1)  # left-padded prompts, draws folded
    torch.testing.assert_close(torch.as_tensor(b.probs), torch.as_tensor(looped.probs), atol=1e-5, rtol=1e-4)


def test_fitting_moves_the_head_delta_and_learns_the_quiz(lm_dir, lm):
    recipe = Recipe(backbone=lm_dir, guide="mle", epochs=30, batch_size=4, max_length=40, lr=3e-2)
    result = train(recipe, quiz(), backbone=lm, progress=False)
    data = for_backbone(quiz(), lm.model, lm.tokenizer)
    preds = predict(result.posterior, make_loader(tokenize(data, lm.tokenizer, 40)["test"], 4), num_samples=0)
    assert (torch.as_tensor(preds.probs).argmax(-1) == torch.tensor(LABELS)).all()  # memorised four questions
    assert result.nll[-1] < 0.1 * result.nll[0]
    assert float(result.posterior.guide.marginals()["head.weight"][0].abs().max()) > 0  # the head moved off W0


def test_warm_up_then_linear_decay():
    assert [lr_factor(s, 10, warmup_ratio=0.2, decay="linear") for s in range(10)] == \
        [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    assert lr_factor(9, 10, final_factor=0.1) == pytest.approx(0.1) and lr_factor(0, 10) == 1.0
    with pytest.raises(Exception, match="lr_decay"):
        Recipe(lr_decay="cosine")


def test_new_recipe_fields_leave_older_fit_keys_alone():
    assert "warmup_ratio" not in Recipe().to_dict() and "lr_decay" not in Recipe().to_dict()
    warm = Recipe(warmup_ratio=0.06, lr_decay="linear")
    assert Recipe.from_dict(warm.to_dict()) == warm and Recipe.from_dict(Recipe().to_dict()) == Recipe()


def test_lora_dropout_is_saved_only_when_set_and_checked():
    assert "lora_dropout" not in PeftConfig().to_dict()["lora"]  # older fit keys and saved runs keep matching
    drop = PeftConfig(LoraConfig(lora_dropout=0.1))
    assert drop.to_dict()["lora"]["lora_dropout"] == 0.1 and PeftConfig.from_dict(drop.to_dict()) == drop
    with pytest.raises(ConfigError, match="LoRA lora_dropout"):
        LoraConfig(lora_dropout=1.0)


def test_mc_dropout_on_a_llama_needs_lora_dropout_which_is_off_outside_it(lm_dir, lm):
    # Llama has no dropout: MC dropout there would be K identical passes, so it is refused in one line; with
    # dropout on the LoRA input the passes differ, and a plain prediction (eval mode) ignores that dropout
    data = for_backbone(quiz(), lm.model, lm.tokenizer)
    loader = make_loader(tokenize(data, lm.tokenizer, 40)["test"], 4)
    plain = train(Recipe(backbone=lm_dir, guide="mle", max_steps=3, batch_size=2, max_length=40, lr=3e-2), quiz(),
                  backbone=lm, progress=False).posterior
    assert not has_dropout(plain.model.backbone)
    with pytest.raises(ConfigError, match=r"LoraConfig\(lora_dropout=0.1\)"):
        mc_dropout_predict(plain, loader, num_samples=2)
    with pytest.raises(ConfigError, match="has none"):
        train(Recipe(backbone=lm_dir, guide="mle", dropout=True, max_steps=1, batch_size=2, max_length=40), quiz(),
              backbone=load_backbone(lm_dir), progress=False)
    recipe = Recipe(backbone=lm_dir, guide="mle", dropout=True, peft=PeftConfig(LoraConfig(lora_dropout=0.5)), max_steps=3,
                    batch_size=2, max_length=40, lr=3e-2)
    dropped = train(recipe, quiz(), backbone=load_backbone(lm_dir), progress=False).posterior
    assert has_dropout(dropped.model.backbone)
    mc = mc_dropout_predict(dropped, loader, num_samples=4, seed=0)
    assert (torch.as_tensor(mc.mutual_information) > 0).all()
    # in eval mode the dropout is off: the same model with the dropout layers removed predicts the same
    with_dropout = predict(dropped, loader, num_samples=0).probs
    for layer in dropped.model.modules():
        if isinstance(layer, LoraLinear):
            layer.dropout = torch.nn.Identity()
    assert not has_dropout(dropped.model.backbone)
    torch.testing.assert_close(torch.as_tensor(with_dropout), torch.as_tensor(predict(dropped, loader, num_samples=0).probs))


def test_the_peers_compare_on_answer_letters(lm_dir, tmp_path):
    # the causal-LM protocol's peer methods, through the harness on a tiny Llama: each cell is scored from its
    # own predictions over the 3 answer letters
    from pyro_bhpeft.compare import Protocol, run_compare

    protocol = Protocol(task="quiz", backbone=lm_dir, train_size=4, eval_size=4, epochs=2, batch_size=2,
                        max_length=40, samples=3, ensemble_size=2, laplace_examples=4, max_steps=3, ood_task="",
                        warmup_ratio=0.25, lr_decay="linear")
    peers = ("map", "mc-dropout-lora", "ensemble", "ivon", "laplace-kfac")
    run_compare(protocol, tmp_path / "cmp", methods=peers, seeds=(0,), data=quiz(), progress=False)
    for method in peers:
        cell = tmp_path / "cmp" / "cells" / f"{method}-seed0"
        metrics = json.loads((cell / "metrics.json").read_text())
        with np.load(cell / "predictions.npz") as f:
            probs, labels = f["test_probs"], f["test_labels"]
        assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
        assert metrics["accuracy"] == float(np.mean(probs.argmax(1) == labels)), method


def test_backbone_mc_dropout_on_a_llama_is_refused_before_any_cell_runs(lm_dir, tmp_path):
    # Llama has no dropout: mc-dropout is refused in one line up front, not after hours of the cells before it
    from pyro_bhpeft.compare import Protocol, run_compare

    protocol = Protocol(task="quiz", backbone=lm_dir, train_size=4, eval_size=4, epochs=1, batch_size=2,
                        max_length=40, samples=2, max_steps=1, ood_task="")
    with pytest.raises(ConfigError, match="has none.*mc-dropout-lora"):
        run_compare(protocol, tmp_path / "cmp", methods=("lora", "mc-dropout"), seeds=(0,), data=quiz(),
                    progress=False)
    assert not (tmp_path / "cmp").exists()


def test_winogrande_subsets_are_nested_and_sized_as_the_official_ones():
    s, m = load_task("winogrande-s"), load_task("winogrande-m")
    assert len(s.splits["train"]) == 640 and len(m.splits["train"]) == 2558
    assert set(s.splits["train"]["question"]) <= set(m.splits["train"]["question"])
    assert s.splits["test"]["question"] == load_task("winogrande").splits["test"]["question"]


@pytest.mark.slow
def test_packaged_smollm2_scores_a_question_with_its_letter_tokens():
    bb = load_backbone("smollm2")
    assert bb.model.config.model_type == PACKAGED_MODELS["smollm2"].model_type  # what prefix_refusal reads
    assert answer_token_ids(bb.tokenizer, [" A", " B", " C", " D", " E", " true", " false"]) == \
        (330, 389, 340, 422, 414, 2629, 7065)
    data = for_backbone(load_task("arc-easy", max_examples=2), bb.model, bb.tokenizer)
    model = build_model(Recipe(backbone="smollm2"), data.spec, bb.model)
    inputs, _ = next(iter(make_loader(tokenize(data, bb.tokenizer, 128)["test"], 2)))
    full = AutoModelForCausalLM.from_pretrained(str(dequantised_dir(PACKAGED_MODELS["smollm2"]))).eval()
    with torch.no_grad():
        ours = model.run(model.initial_values(), inputs)
        theirs = full(**inputs).logits[:, -1, [330, 389, 340, 422]]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_batches_of_left_padded_prompts_are_as_long_as_their_longest_prompt(lm):
    data = for_backbone(quiz(), lm.model, lm.tokenizer)
    tokens = tokenize(data, lm.tokenizer, 64)["train"]
    longest = max(int(row["attention_mask"].sum()) for row in tokens)
    inputs, _ = next(iter(make_loader(tokens, 4)))
    assert inputs["input_ids"].shape == (4, longest) and inputs["attention_mask"][:, 0].any()
    one, _ = next(iter(make_loader(tokens.select([0]), 1)))
    assert one["attention_mask"].all()  # a batch of one has no padding left
    right = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 0, 0, 0]] * 2)}
    from pyro_bhpeft.data.batches import trim_left_padding

    assert trim_left_padding(right) is right  # right padding (encoders) is left alone
