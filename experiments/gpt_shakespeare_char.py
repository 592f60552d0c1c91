"""A character-level GPT on Tiny Shakespeare: nanoGPT's shakespeare-char setup, and its small CPU one.

    python -m experiments.gpt_shakespeare_char --workdir=runs/gpt --preset=cpu      # 4 layers, 2000 steps
    python -m experiments.gpt_shakespeare_char --workdir=runs/gpt --preset=cpu --mode=sample --prompt=ROMEO:

Offline, prepare the corpus first: `python -m bmjax.data prepare tiny_shakespeare --manual_dir=DIR` with
DIR holding `input.txt`. result.json's `validation.loss` is the loss over every non-overlapping window
of the validation split.
"""

import dataclasses
from typing import Optional

import bmjax
from bmjax import cli, sampling
from bmjax.config import Config, field
from bmjax.sampling import TextSampling

PRESETS = {
    # nanoGPT's CPU run: python train.py config/train_shakespeare_char.py --device=cpu --block_size=64
    # --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
    # Its peak learning rate of 1e-3 is low for a model this small: 2e-3 ends 0.1 lower (validation loss
    # 1.783 against 1.884, 1.890 and 1.885 for seeds 0-2 at 1e-3; nanoGPT's own run: 1.886).
    "cpu": dict(num_layers=4, num_heads=4, embed_dim=128, block_size=64, batch_size=12, train_steps=2000,
                dropout=0.0, learning_rate=2e-3),
}


@dataclasses.dataclass(frozen=True)
class GptShakespeareChar(TextSampling, Config):
    dataset: str = "tiny_shakespeare"
    model: str = "gpt"
    task: str = "language_model"
    block_size: Optional[int] = 256
    num_layers: int = field(6, "Transformer blocks.")
    num_heads: int = field(6, "Attention heads per block.")
    num_kv_heads: Optional[int] = field(None, "Key/value heads (fewer than --num_heads: grouped-query).")
    embed_dim: int = field(384, "Width of the residual stream.")
    positions: str = field("learned", "Position encoding.", ("learned", "rotary"))
    activation: str = field("gelu", "MLP activation: gelu (tanh approximation, as GPT-2), gelu_exact (erf, as "
                                    "nanoGPT), relu, or gated swiglu, geglu.",
                            ("gelu", "gelu_exact", "relu", "swiglu", "geglu"))
    use_bias: bool = field(False, "Biases in dense layers (nanoGPT trains without).")
    dropout: float = 0.2
    batch_size: int = 64
    eval_batch_size: int = 256
    train_steps: Optional[int] = 5000
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    b2: float = 0.99
    lr_schedule: str = "warmup_cosine"
    warmup_steps: int = 100
    min_learning_rate: float = 1e-4
    weight_decay: float = 0.1
    clip_grad_norm: Optional[float] = 1.0
    log_every_steps: int = 50
    eval_every_steps: Optional[int] = 250
    checkpoint_every_steps: Optional[int] = 500


def main(config: GptShakespeareChar, command: str = "experiments.gpt_shakespeare_char"):
    return sampling.sample(config) if config.mode == "sample" else bmjax.run(config, command)


if __name__ == "__main__":
    cli.main(GptShakespeareChar, presets=PRESETS, entry=main)
