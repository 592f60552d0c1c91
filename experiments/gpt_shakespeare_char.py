"""A character-level GPT on Tiny Shakespeare: nanoGPT's shakespeare-char setup, and its small CPU one.

    python -m experiments.gpt_shakespeare_char --workdir=runs/gpt --preset=cpu      # 4 layers, 2000 steps
    python -m experiments.gpt_shakespeare_char --workdir=runs/gpt --preset=cpu --mode=sample --prompt=ROMEO:

Offline, prepare the corpus first: `python -m bmjax.data prepare tiny_shakespeare --manual_dir=DIR` with
DIR holding `input.txt`. result.json's `validation.loss` is the loss over every non-overlapping window
of the validation split.
"""

import dataclasses
from typing import Optional

import jax
import numpy as np

import bmjax
from bmjax import cli
from bmjax.config import Config, field

PRESETS = {
    # nanoGPT's CPU run: python train.py config/train_shakespeare_char.py --device=cpu --block_size=64
    # --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
    # Its peak learning rate of 1e-3 is low for a model this small: 2e-3 ends 0.1 lower (validation loss
    # 1.783 against 1.884, 1.890 and 1.885 for seeds 0-2 at 1e-3; nanoGPT's own run: 1.886).
    "cpu": dict(num_layers=4, num_heads=4, embed_dim=128, block_size=64, batch_size=12, train_steps=2000,
                dropout=0.0, learning_rate=2e-3),
}


@dataclasses.dataclass(frozen=True)
class GptShakespeareChar(Config):
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
    mode: str = field("train", "Train, or sample from the trained model in --workdir.", ("train", "sample"),
                      trains=False)
    prompt: str = field("\n", "Text the samples continue (\\n and \\t stand for a newline and a tab).",
                        trains=False)
    max_new_tokens: Optional[int] = field(None, "Characters to sample (default: fill the block); past the block, "
                                                "the model reads a sliding window of the latest characters.",
                                          trains=False)
    temperature: float = field(0.8, "Sampling temperature; 0 takes the most likely character.", trains=False)
    top_k: Optional[int] = field(None, "Sample among the k most likely characters.", trains=False)
    top_p: Optional[float] = field(None, "Sample among the most likely characters holding this probability.",
                                   trains=False)
    num_samples: int = field(1, "Samples to draw.", trains=False)

    def validate(self) -> "GptShakespeareChar":
        super().validate()
        if self.temperature < 0:
            raise bmjax.UsageError(f"--temperature must not be negative, got {self.temperature}; 0 samples greedily")
        for name in ("top_k", "max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise bmjax.UsageError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise bmjax.UsageError(f"--top_p must lie in (0, 1], got {self.top_p}")
        if self.num_samples < 1:
            raise bmjax.UsageError(f"--num_samples must be at least 1, got {self.num_samples}")
        return self


def sample(config: GptShakespeareChar, command: str = "") -> list[str]:
    """Continues --prompt with the newest checkpoint of the run in --workdir; prints and returns the samples.
    The model and tokenizer are the run's own; only the sampling flags are read from `config`."""
    from bmjax.generate import generate

    run = bmjax.restore(config.workdir)
    prompt = run.tokenizer.encode(config.prompt.replace("\\n", "\n").replace("\\t", "\t"))
    new_tokens = config.max_new_tokens or run.config.block_size - len(prompt)
    tokens = generate(run.model, run.params, np.repeat(prompt[None], config.num_samples, 0), new_tokens,
                      jax.random.PRNGKey(config.seed), temperature=config.temperature or 1.0,
                      greedy=config.temperature == 0, top_k=config.top_k, top_p=config.top_p)
    texts = [run.tokenizer.decode(row) for row in np.asarray(tokens)]
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1} (step {run.step}) ---\n{text}")
    return texts


def main(config: GptShakespeareChar, command: str = "experiments.gpt_shakespeare_char"):
    return sample(config, command) if config.mode == "sample" else bmjax.run(config, command)


if __name__ == "__main__":
    cli.main(GptShakespeareChar, presets=PRESETS, entry=main)
