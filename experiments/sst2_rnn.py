"""A bidirectional LSTM sentiment classifier on SST-2, its embeddings learnt from the training sentences alone.

    python -m experiments.sst2_rnn --workdir=runs/sst2_rnn --manual_dir=path/to/sst2 --num_seeds=3

Offline, --manual_dir holds the `stsa.binary.{train,dev,test}` files; online, TFDS's glue/sst2 is read. Each
sentence is `[CLS] pieces [SEP]` padded to --block_size; padding is outside every row's length, so it changes
nothing. The classifier reads the forward state after the last piece beside the backward state after the first
(--pooling=last), or pools the outputs over the sentence. Training stops early on validation accuracy.
"""

import dataclasses
from typing import Optional

from bmjax import cli
from bmjax.config import Config, field
from bmjax.models.rnn import CELLS, INITS, POOLINGS


@dataclasses.dataclass(frozen=True)
class Sst2Rnn(Config):
    dataset: str = "sst2"
    model: str = "rnn"
    task: str = "classification"
    tokenizer: Optional[str] = "sentencepiece"
    vocab_size: int = 8000
    block_size: Optional[int] = 64
    cell: str = field("lstm", "Recurrent cell.", CELLS)
    hidden_size: int = field(128, "Width of each direction of each recurrent layer.")
    num_layers: int = field(1, "Recurrent layers.")
    rnn_init: str = field("flax", "Initialisation of the recurrent cells: flax's (LeCun normal inputs, orthogonal "
                                "recurrence, zero biases) or torch's (all ~ U(+-1/sqrt(hidden_size))).", INITS)
    bidirectional: bool = field(True, "Read each sentence in both directions.")
    pooling: str = field("max", "What the classifier reads of the recurrent outputs.", POOLINGS)
    embed_dim: int = field(128, "Width of the learnt word-piece embeddings.")
    dropout: float = 0.5
    batch_size: int = 32
    epochs: int = 8
    optimizer: str = "adamw"
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"
    weight_decay: float = 1e-4
    clip_grad_norm: Optional[float] = 1.0
    log_every_steps: int = 54
    early_stopping_patience: Optional[int] = 3
    early_stopping_metric: str = "accuracy"


if __name__ == "__main__":
    cli.main(Sst2Rnn)
