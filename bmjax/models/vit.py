"""A Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", 2020).

The image is cut into non-overlapping patch_size x patch_size patches; each patch is projected linearly to
`embed_dim` (a Conv with kernel = stride = patch size, written as a reshape and one DenseGeneral whose kernel
[patch, patch, channels, embed] has the Conv's layout). A learned class token goes in front, learned position
embeddings are added, and pre-LayerNorm transformer blocks (non-causal, exact GELU) follow. The classifier reads
the class token after a final LayerNorm.
"""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from bmjax.errors import UsageError
from bmjax.models.transformer import INIT_STD, block_class, layer_norm, partitioned
from bmjax.models.registry import register

# Named sizes. The paper's Ti/S/B at patch 16 (Ti and S as in DeiT); at 224x224 with 1000 classes ViT-B/16
# has 86,567,656 parameters. "mnist" is a small one that trains on 28x28 digits on a CPU in minutes.
PRESETS = {
    "ViT-Ti/16": dict(patch_size=16, num_layers=12, num_heads=3, embed_dim=192, mlp_dim=768),
    "ViT-S/16": dict(patch_size=16, num_layers=12, num_heads=6, embed_dim=384, mlp_dim=1536),
    "ViT-B/16": dict(patch_size=16, num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072),
    "mnist": dict(patch_size=7, num_layers=4, num_heads=4, embed_dim=64, mlp_dim=128),
}


class ViTUsageError(UsageError, ValueError):
    """Images the model cannot cut into patches, or sizes that do not fit together: a UsageError, so that the
    command line prints one line, and a ValueError, as a bad argument to a model."""


def patchify(images, patch_size: int):
    """[batch, H, W, C] -> [batch, H/p, W/p, p, p, C]: the patch_size x patch_size patches, row by row."""
    batch, height, width, channels = images.shape
    rows, cols = height // patch_size, width // patch_size
    patches = images.reshape(batch, rows, patch_size, cols, patch_size, channels)
    return patches.transpose(0, 1, 3, 2, 4, 5)


class ViT(nn.Module):
    """Images [batch, H, W] or [batch, H, W, C] in [0, 1] -> float32 logits [batch, num_outputs].

    H and W must be multiples of `patch_size`. The position embeddings are sized by the image the model is
    initialised on, so apply it to images of that size.
    """

    num_outputs: int
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    embed_dim: int = 768
    mlp_dim: Optional[int] = None  # None: 4 * embed_dim
    dropout: float = 0.0
    norm_epsilon: float = 1e-6  # the paper's LayerNorm epsilon
    remat: bool = False  # recompute each block's activations in the backward pass
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        if images.ndim == 3:  # [batch, H, W] -> one channel
            images = images[..., None]
        if images.ndim != 4:
            raise ViTUsageError(f"ViT takes images [batch, height, width] or [batch, height, width, channels], "
                                  f"got an input of shape {images.shape}; use an image dataset")
        _, height, width, _ = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ViTUsageError(f"{height}x{width} images do not divide into {self.patch_size}x{self.patch_size} "
                                  f"patches; choose a patch size that divides both (e.g. --patch_size="
                                  f"{_largest_common_divisor_below(height, width, self.patch_size)})")
        if self.embed_dim % self.num_heads:
            raise ViTUsageError(f"embed_dim={self.embed_dim} is not a multiple of num_heads={self.num_heads}")

        patches = patchify(images.astype(self.dtype), self.patch_size)
        x = nn.DenseGeneral(
            self.embed_dim, axis=(-3, -2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=partitioned(nn.initializers.lecun_normal(),
                                    ("patch_height", "patch_width", "channels", "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)), name="patch_embedding")(patches)
        batch = x.shape[0]
        x = x.reshape(batch, -1, self.embed_dim)  # [batch, patches, embed], row by row

        class_token = self.param("class_token", partitioned(nn.initializers.zeros, ("embed",)),
                                 (self.embed_dim,), self.param_dtype)
        class_tokens = jnp.broadcast_to(class_token.astype(self.dtype), (batch, 1, self.embed_dim))
        x = jnp.concatenate([class_tokens, x], axis=1)
        position_embedding = self.param(
            "position_embedding", partitioned(nn.initializers.normal(INIT_STD), ("positions", "embed")),
            x.shape[1:], self.param_dtype)
        x = x + position_embedding.astype(self.dtype)[None]
        x = nn.Dropout(self.dropout, deterministic=not train)(x)

        block = block_class(self.remat)
        for i in range(self.num_layers):
            x = block(
                self.num_heads, self.embed_dim // self.num_heads, self.mlp_dim or 4 * self.embed_dim,
                activation="gelu_exact", dropout=self.dropout, norm_epsilon=self.norm_epsilon, dtype=self.dtype,
                param_dtype=self.param_dtype, name=f"block_{i}",
            )(x, None, None, False, train)  # mask, padding_mask, causal, train
        x = layer_norm(self.dtype, self.param_dtype, "final_norm", self.norm_epsilon)(x)

        cls = lax.index_in_dim(x, 0, axis=1, keepdims=False)  # a slice (x[:, 0] gathers, which LiteRT cannot take)
        # The head starts at zero, as in the paper's fine-tuning: every class equally likely at first.
        logits = nn.Dense(self.num_outputs, dtype=self.dtype, param_dtype=self.param_dtype,
                          kernel_init=partitioned(nn.initializers.zeros, ("embed", "classes")),
                          bias_init=partitioned(nn.initializers.zeros, ("classes",)), name="head")(cls)
        return logits.astype(jnp.float32)


def _largest_common_divisor_below(height: int, width: int, limit: int) -> int:
    """The largest patch size up to `limit` that divides both sides (1 at worst)."""
    return max(p for p in range(1, limit + 1) if height % p == 0 and width % p == 0)


@register("vit")
def build_vit(config, io) -> ViT:
    return ViT(num_outputs=io.num_outputs, patch_size=config.patch_size, num_layers=config.num_layers,
               num_heads=config.num_heads, embed_dim=config.embed_dim, mlp_dim=config.mlp_dim, dropout=config.dropout,
               remat=config.remat, dtype=config.compute_dtype)
