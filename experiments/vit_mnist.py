"""A small Vision Transformer on MNIST (or Fashion-MNIST, or CIFAR-10 through TFDS online).

28x28 digits cut into 7x7 patches make 16 tokens plus the class token; 4 pre-LayerNorm blocks 64 wide with
4 heads, AdamW with a linear warm-up and a cosine decay.

    python -m experiments.vit_mnist --workdir=runs/vit                       # MNIST, 6 epochs
    python -m experiments.vit_mnist --workdir=runs/vit --preset=cpu_quick    # 3 epochs, a few minutes on 2 cores
    python -m experiments.vit_mnist --workdir=runs/vit_fashion --dataset=fashion_mnist
    python -m experiments.vit_mnist --workdir=runs/vit_cifar --dataset=cifar10 --patch_size=4   # 32x32, online

Offline, prepare MNIST first: `python -m bmjax.data prepare mnist --manual_dir=DIR --data_dir=TFDS_DIR` with DIR
holding the four idx .gz files, then pass `--data_dir=TFDS_DIR`.
"""

import dataclasses
from typing import Optional

from bmjax import cli
from bmjax.config import Config, field
from bmjax.errors import UsageError

PRESETS = {
    # A quick CPU run: the default model for 3 epochs.
    "cpu_quick": dict(epochs=3, warmup_steps=270),
}


@dataclasses.dataclass(frozen=True)
class VitMnist(Config):
    dataset: str = "mnist"
    model: str = "vit"
    patch_size: int = field(7, "Side of the square patches the image is cut into; must divide its height and "
                               "width.")
    num_layers: int = field(4, "Transformer blocks.")
    num_heads: int = field(4, "Attention heads per block.")
    embed_dim: int = field(64, "Width of the residual stream (a multiple of --num_heads).")
    mlp_dim: Optional[int] = field(128, "Hidden width of each block's MLP (default: 4 x --embed_dim).")
    dropout: float = 0.0
    validation_split: float = 0.1
    # 54,000 training images in batches of 100 make 540 steps an epoch; logging every 108 steps keeps every
    # compiled segment of steps the same length, so that XLA compiles the training loop once.
    batch_size: int = 100
    log_every_steps: int = 108
    epochs: int = 6
    optimizer: str = "adamw"
    learning_rate: float = 3e-3
    lr_schedule: str = "warmup_cosine"
    warmup_steps: int = 540
    min_learning_rate: float = 1e-5
    weight_decay: float = 0.05
    clip_grad_norm: Optional[float] = 1.0

    def validate(self) -> "VitMnist":
        super().validate()
        for name in ("patch_size", "num_layers", "num_heads", "embed_dim"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.mlp_dim is not None and self.mlp_dim <= 0:
            raise UsageError(f"--mlp_dim must be positive, got {self.mlp_dim}")
        if self.embed_dim % self.num_heads:
            raise UsageError(f"--embed_dim={self.embed_dim} must be a multiple of --num_heads={self.num_heads}")
        return self


if __name__ == "__main__":
    cli.main(VitMnist, presets=PRESETS)
