"""Facts about each model family, in one table keyed by ``config.model_type``.

Where the transformer blocks are, which linear layers LoRA targets by default, the feed-forward
output an adapter wraps, the self-attention module prefix-tuning extends, and how features are
pooled. Nothing else in the library sniffs class or attribute names.

Add a family with one line::

    from pyro_bhpeft.layers.arch import ARCHITECTURES, Architecture
    ARCHITECTURES.register("my_model", Architecture(blocks="encoder.layer", lora_targets=("q", "v"),
                                                    ffn_output="ffn.out", attention="attn", pooling="mean"))
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import ConfigError
from ..registry import Registry

__all__ = ["Architecture", "ARCHITECTURES", "architecture", "find_blocks"]


@dataclass(frozen=True)
class Architecture:
    """One model family. Paths are relative: ``blocks`` to the backbone, the others to one block.

    ``ffn_output`` or ``attention`` is ``None`` where the family has no such module our layers can
    wrap (GPT-2's projections are ``Conv1D``, not ``nn.Linear``); ``pooling`` is ``mean`` (over
    visible tokens) for encoders and ``last`` (the last visible token) for decoders.
    """

    blocks: str
    lora_targets: tuple[str, ...]
    ffn_output: str | None
    attention: str | None
    pooling: str
    decoder: bool = False


ARCHITECTURES: Registry[Architecture] = Registry("model type")

_BERT = Architecture("encoder.layer", ("query", "value"), "output.dense", "attention.self", "mean")
_LLAMA = Architecture("layers", ("q_proj", "v_proj"), "mlp.down_proj", "self_attn", "last", decoder=True)
for _name in ("bert", "roberta", "xlm-roberta", "electra"):
    ARCHITECTURES.register(_name, _BERT)
ARCHITECTURES.register("mpnet", Architecture("encoder.layer", ("q", "v"), "output.dense", None, "mean"))
ARCHITECTURES.register("distilbert", Architecture("transformer.layer", ("q_lin", "v_lin"), "ffn.lin2", "attention",
                                                  "mean"))
for _name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "phi3"):
    ARCHITECTURES.register(_name, _LLAMA)
ARCHITECTURES.register("gpt2", Architecture("h", (), None, "attn", "last", decoder=True))


def architecture(model: nn.Module) -> Architecture:
    """The table entry of ``model`` (a Hugging Face backbone), or a one-line error naming the fix."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"no architecture facts for model type {model_type!r} ({type(model).__name__}); "
                          f"known: {', '.join(ARCHITECTURES)}; register it with "
                          "pyro_bhpeft.layers.arch.ARCHITECTURES.register(model_type, Architecture(...))")
    return ARCHITECTURES[model_type]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The path and list of transformer blocks of ``model``, from its architecture entry."""
    path = architecture(model).blocks
    try:
        blocks = model.get_submodule(path)
    except AttributeError:
        blocks = None
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError(f"{type(model).__name__} has no block list at {path!r}; fix its entry in "
                          "pyro_bhpeft.layers.arch.ARCHITECTURES")
    return path, blocks
