"""The command line answers at once: its parser imports no torch and friends, and the values it writes down
because their homes do are checked against those homes."""

from __future__ import annotations

import subprocess
import sys


def test_the_parser_and_every_help_import_no_heavy_library():
    """`pyro-bhpeft --help` answers at once: parsing imports none of torch, pyro, transformers, arviz, datasets."""
    script = """
import sys
from pyro_bhpeft.cli import build_parser, main
parser = build_parser()
commands = next(a for a in parser._actions if a.dest == "command").choices
for argv in [["--help"]] + [[name, "--help"] for name in commands]:
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "pyro", "transformers", "arviz", "datasets") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_parsers_static_values_are_those_of_their_homes():
    """The parser imports no torch, so values whose home does are written in cli_options.STATIC: each checked here."""
    import inspect

    from pyro_bhpeft.backbone import DEVICES
    from pyro_bhpeft.cli_options import COLUMNS, STATIC
    from pyro_bhpeft.compare import Protocol, run_compare
    from pyro_bhpeft.config import PeftConfig
    from pyro_bhpeft.continual import posterior_prior
    from pyro_bhpeft.data import load_files
    from pyro_bhpeft.guides import GUIDES, SCALE_PARAMS
    from pyro_bhpeft.layers import PEFT_KINDS
    from pyro_bhpeft.layers.gates import NOISES, GatedLoraConfig
    from pyro_bhpeft.meta import MetaConfig
    from pyro_bhpeft.predict import DEFAULT_SAMPLES
    from pyro_bhpeft.priors import PRIORS
    from pyro_bhpeft.runs import COLUMNS as RUN_COLUMNS

    assert COLUMNS == RUN_COLUMNS
    assert tuple(STATIC["guides"]) == tuple(GUIDES.names()) and tuple(STATIC["scale_params"]) == tuple(SCALE_PARAMS)
    assert tuple(STATIC["peft_kinds"]) == tuple(PEFT_KINDS) and STATIC["peft"] == PeftConfig().kinds
    assert tuple(STATIC["priors"]) == tuple(PRIORS.names()) and tuple(STATIC["gate_noises"]) == tuple(NOISES)
    gates = GatedLoraConfig()
    assert STATIC["gate_defaults"] == {"rank_prior": gates.rank_prior, "bit_prior": gates.bit_prior, "noise": gates.noise}
    assert tuple(STATIC["devices"]) == tuple(DEVICES) and STATIC["samples"] == DEFAULT_SAMPLES
    from pyro_bhpeft.modes import PREDICTIVE_MODES

    assert tuple(STATIC["modes"]) == PREDICTIVE_MODES
    assert STATIC["temper"] == inspect.signature(posterior_prior).parameters["temper"].default
    assert STATIC["seeds"] == len(inspect.signature(run_compare).parameters["seeds"].default)
    assert STATIC["protocol"] == {k: getattr(Protocol(), k) for k in STATIC["protocol"]}
    assert STATIC["meta"] == MetaConfig().__dict__
    assert inspect.signature(load_files).parameters["kind"].default is None  # --kind's default: inferred
