"""A VQ-VAE (van den Oord et al. 2017) on MNIST, Fashion-MNIST or any image dataset: the image tokenizer of
text-to-image, or a discrete autoencoder on its own.

    python -m experiments.vqvae --workdir=runs/vqvae --data_dir=D                  # MNIST, 28x28 -> 7x7 codes
    python -m experiments.vqvae --workdir=runs/vqvae_f --dataset=fashion_mnist --num_codes=128

result.json reports the reconstruction's mean squared error and PSNR, and how many codes the images use (and the
codebook's perplexity: the number of codes that would be in equal use). `bmjax.restore(workdir)` gives the model,
whose `encode` and `decode` methods turn images into codes and back.
"""

import dataclasses
from typing import Optional

from bmjax import cli
from bmjax.config import Config, field
from bmjax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Vqvae(Config):
    dataset: str = "mnist"
    model: str = "vqvae"
    task: str = "reconstruction"
    validation_split: Optional[float] = 0.1
    batch_size: int = 128
    epochs: int = 3
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    steps_per_call: int = 1  # convolutions inside loops are slow on XLA:CPU (jax#12868)
    num_codes: int = field(64, "Codebook size: the vocabulary of image tokens.")
    code_dim: int = field(32, "Width of each codebook vector.")
    features: int = field(64, "Filters of the encoder's and decoder's widest layers.")
    downsample: int = field(2, "Stride-2 convolutions: each code stands for a 2^downsample pixel square.")
    residual_blocks: int = field(2, "Residual blocks after the encoder's and before the decoder's resolution changes.")
    commitment: float = field(0.25, "Weight beta of the commitment term ||z_e - sg[e]||^2.")
    normalize_codes: bool = field(True, "Compare encodings and codes on the unit sphere (l2-normalised, Yu et al. "
                                        "2021), which keeps the codebook in use; --nonormalize_codes: the paper's "
                                        "plain distances.")

    def validate(self) -> "Vqvae":
        super().validate()
        for name in ("num_codes", "code_dim", "features", "downsample"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.residual_blocks < 0 or self.commitment < 0:
            raise UsageError("--residual_blocks and --commitment must not be negative")
        if self.features % 2 ** self.downsample:
            raise UsageError(f"--features={self.features} must divide by 2^--downsample={2 ** self.downsample} (the "
                             "encoder halves its width toward the image)")
        return self


if __name__ == "__main__":
    cli.main(Vqvae)
