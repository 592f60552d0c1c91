"""BERT fine-tuned on SST-2 sentiment: the pretrained encoder (`--restore_from` a bert_pretrain run, or a
converted Hugging Face checkpoint), a pooler and a classification head.

    python -m experiments.bert_finetune_sst2 --workdir=runs/bert_sst2 --restore_from=runs/bert_mlm \
        --manual_dir=path/to/sst2
    ... --freeze_encoder          # train the pooler and head only (a linear probe of the encoder)

Offline, --manual_dir holds the `stsa.binary.{train,dev,test}` files; online, TFDS's glue/sst2 is read. The
encoder's size flags must match the pretrained run's (its flags.txt); the tokenizer comes with --restore_from.
"""

import dataclasses
from typing import Optional

import bmjax
from bmjax import cli
from bmjax.config import Config, field
from experiments.bert_pretrain import SIZES

ENCODER = "^bert/"  # the parameters of the encoder shared with bert_mlm


@dataclasses.dataclass(frozen=True)
class BertFinetuneSst2(Config):
    dataset: str = "sst2"
    model: str = "bert_classifier"
    task: str = "classification"
    # None: the tokenizer saved with --restore_from's run, or without one a new subword tokenizer.
    tokenizer: Optional[str] = None
    vocab_size: int = 8000
    block_size: Optional[int] = 128
    num_layers: int = field(4, "Transformer blocks.")
    num_heads: int = field(4, "Attention heads per block.")
    embed_dim: int = field(256, "Width of the hidden states.")
    mlp_dim: Optional[int] = field(None, "Width of the MLP (default: 4 x embed_dim).")
    dropout: float = 0.1
    batch_size: int = 32
    epochs: int = 4
    optimizer: str = "adamw"
    learning_rate: float = 1e-4
    lr_schedule: str = "warmup_cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.01
    log_every_steps: int = 50
    freeze_encoder: bool = field(False, "Train only the pooler and classification head (same as --freeze=^bert/).")


def main(config: BertFinetuneSst2, command: str = "experiments.bert_finetune_sst2"):
    if config.freeze_encoder:
        config = config.replace(freeze=ENCODER)
    return bmjax.run(config, command)


if __name__ == "__main__":
    cli.main(BertFinetuneSst2, presets=SIZES, entry=main)
