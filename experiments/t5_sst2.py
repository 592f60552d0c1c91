"""T5 on SST-2 as text-to-text, as the T5 paper frames GLUE: "sst2 sentence: <text>" -> "positive" or
"negative". Trained with teacher forcing; `exact_match` in result.json is the accuracy of greedy decoding (a
sequence whose every teacher-forced argmax is right is exactly what greedy decoding emits).

    python -m experiments.t5_sst2 --workdir=runs/t5 --manual_dir=path/to/sst2     # stsa.binary.* files
    python -m experiments.t5_sst2 --workdir=runs/t5 --mode=predict --text="a gorgeous, witty film"
"""

import dataclasses
from typing import Optional

import numpy as np

import bmjax
from bmjax import cli
from bmjax.config import Config, field

PRESETS = {"cpu": dict(num_layers=2, num_heads=4, embed_dim=128, head_dim=32, mlp_dim=512)}


@dataclasses.dataclass(frozen=True)
class T5Sst2(Config):
    dataset: str = "sst2"
    model: str = "t5"
    task: str = "seq2seq"
    tokenizer: Optional[str] = "sentencepiece"
    vocab_size: int = 8000
    block_size: Optional[int] = 96
    num_layers: int = field(4, "Layers of the encoder and of the decoder.")
    num_heads: int = field(4, "Attention heads per layer.")
    embed_dim: int = field(256, "Width of the hidden states.")
    head_dim: int = field(64, "Width of each attention head.")
    mlp_dim: int = field(1024, "Width of the MLP.")
    activation: str = field("relu", "MLP activation: relu (T5 v1.0) or geglu (v1.1).", ("relu", "geglu"))
    dropout: float = 0.1
    batch_size: int = 32
    epochs: int = 10
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    lr_schedule: str = "warmup_cosine"
    warmup_steps: int = 200
    weight_decay: float = 0.01
    clip_grad_norm: Optional[float] = 1.0
    log_every_steps: int = 50
    mode: str = field("train", "Train, or answer --text with the trained model in --workdir.", ("train", "predict"),
                      trains=False)
    text: str = field("a gorgeous , witty , seductive movie .", "A sentence to classify in predict mode.",
                      trains=False)


def predict(config: T5Sst2, command: str = "") -> str:
    """Greedy decoding of the answer to --text with the newest checkpoint of the run in --workdir (its model,
    tokenizer and class names)."""
    from bmjax.data.sst2 import text_to_text_prefix
    from bmjax.data.text import seq2seq_source
    from bmjax.models.t5 import generate

    run = bmjax.restore(config.workdir)
    tokenizer = run.tokenizer
    source = seq2seq_source([config.text], np.zeros(1, np.int32), run.info.class_names,
                            text_to_text_prefix(run.config.dataset), tokenizer, run.config.block_size)
    question = source[np.arange(1)]["x"]
    answer = np.asarray(generate(run.model, run.params, question["inputs"], question["targets"].shape[1],
                                 eos_id=tokenizer.eos_id))[0]
    text = tokenizer.decode(answer[:list(answer).index(tokenizer.eos_id)] if tokenizer.eos_id in answer else answer)
    print(f"{config.text!r} -> {text!r} (step {run.step})")
    return text


def main(config: T5Sst2, command: str = "experiments.t5_sst2"):
    return predict(config, command) if config.mode == "predict" else bmjax.run(config, command)


if __name__ == "__main__":
    cli.main(T5Sst2, presets=PRESETS, entry=main)
