"""BERT masked-language-model pretraining: 15% of the tokens corrupted (80% [MASK], 10% random, 10% kept), the
encoder learns to restore them. Sentences are packed into rows of --block_size; tokens attend within their own
sentence.

    python -m experiments.bert_pretrain --workdir=runs/bert_mlm --manual_dir=path/to/sst2   # stsa.binary.* files
    python -m experiments.bert_finetune_sst2 --workdir=runs/bert_sst2 --restore_from=runs/bert_mlm ...

`--preset=` takes a size (bert-tiny, bert-mini, bert-small, bert-medium, bert-base, bert-large) or `cpu`
(BERT-tiny on 64-token rows, a few minutes on 2 CPU cores); give the fine-tuning run the same preset.

The default corpus is SST-2's training sentences (labels unused); `--dataset=tiny_shakespeare` or any TFDS text
dataset works too. The run saves its subword tokenizer beside its checkpoints: fine-tuning with
`--restore_from` reads text with it.
"""

import dataclasses
from typing import Optional

from bmjax import cli
from bmjax.config import Config, field
from bmjax.models.bert import PRESETS

SIZES = {name: dict(num_layers=p["num_layers"], num_heads=p["num_heads"], embed_dim=p["embed_dim"])
         for name, p in PRESETS.items()}
# A few minutes on 2 CPU cores: BERT-tiny's size on sentences of up to 64 tokens.
SIZES["cpu"] = dict(SIZES["bert-tiny"], block_size=64, vocab_size=4000)


@dataclasses.dataclass(frozen=True)
class BertPretrain(Config):
    dataset: str = "sst2"
    model: str = "bert_mlm"
    task: str = "masked_lm"
    tokenizer: Optional[str] = "sentencepiece"
    vocab_size: int = 8000
    block_size: Optional[int] = 128
    num_layers: int = field(4, "Transformer blocks.")
    num_heads: int = field(4, "Attention heads per block.")
    embed_dim: int = field(256, "Width of the hidden states.")
    mlp_dim: Optional[int] = field(None, "Width of the MLP (default: 4 x embed_dim).")
    dropout: float = 0.1
    batch_size: int = 32
    train_steps: Optional[int] = 3000
    optimizer: str = "adamw"
    learning_rate: float = 5e-4
    lr_schedule: str = "warmup_cosine"
    warmup_steps: int = 300
    weight_decay: float = 0.01
    clip_grad_norm: Optional[float] = 1.0
    log_every_steps: int = 50
    eval_every_steps: Optional[int] = 500
    checkpoint_every_steps: Optional[int] = 500


if __name__ == "__main__":
    cli.main(BertPretrain, presets=SIZES)
