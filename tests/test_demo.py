"""The demo compares deterministic LoRA with the recipe ``fit`` takes by default, on the demo's schedule."""

from pyro_bhpeft.demo import DEMO_METHODS
from pyro_bhpeft.recipe import Recipe, kind_recipe

SCHEDULE = dict(backbone="minilm", epochs=1, batch_size=16, lr=2e-3, max_length=64, seed=0)


def test_the_demo_runs_fits_default_against_lora_on_one_schedule():
    (lora_name, lora), (name, default) = DEMO_METHODS.items()
    assert lora_name == "deterministic LoRA" and lora == Recipe(guide="mle", **SCHEDULE)
    assert default == kind_recipe("classification").with_(**SCHEDULE)  # what fit takes, whatever it is
    assert name.startswith("fit's default (")


def test_each_method_runs_in_a_plain_folder_name():
    from pyro_bhpeft.demo import _slug

    assert _slug("fit's default (mean-field-lora)") == "fits-default-mean-field-lora"
    assert _slug("BH-PEFT (mean-field)") == "bh-peft-mean-field"
