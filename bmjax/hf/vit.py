"""ViT from Hugging Face (`ViTForImageClassification` or `ViTModel` weights, model_type "vit", such as
google/vit-base-patch16-224) as a `bmjax.models.vit.ViT`.

    model, params = import_vit("path/to/vit-base-patch16-224")   # a folder saved with save_pretrained()
    logits = model.apply({"params": params}, images)              # images [batch, H, W, C]: NHWC, not NCHW

Both are pre-LayerNorm transformers with exact (erf) GELU that classify the class token after a final
LayerNorm; Hugging Face's LayerNorm epsilon (`layer_norm_eps`, 1e-12 by default) becomes bmjax's
`norm_epsilon`. Names as save_pretrained writes them (transformers 5's in-memory names, `layers.{i}.attention.q_proj`,
`.o_proj`, `.mlp.fc1` and so on, are read too):

    embeddings.cls_token, position_embeddings               class_token, position_embedding
    embeddings.patch_embeddings.projection                  patch_embedding (Conv [E, C, p, p] -> [p, p, C, E])
    encoder.layer.{i}.attention.attention.query/key/value   block_{i}/attention/query, key, value
    encoder.layer.{i}.attention.output.dense                block_{i}/attention/out
    encoder.layer.{i}.intermediate.dense, output.dense      block_{i}/mlp/up, down
    encoder.layer.{i}.layernorm_before, layernorm_after     block_{i}/attention_norm, mlp_norm
    layernorm, classifier                                   final_norm, head

Torch's Linear stores weights as [out, in], so every kernel is transposed; query, key and value get their
heads as an axis of their own. The position embeddings fix the image size (config's `image_size`): apply the
model to images of that size. A checkpoint without a classifier (`ViTModel`, whose pooler bmjax's ViT does
not use), or with one of another size than `num_outputs`, gets a freshly initialised head (zeros, as bmjax's
ViT starts one), and a warning names it.
"""

import re
from collections.abc import Mapping
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bmjax.errors import UsageError
from bmjax.hf import Source, check_config, load_state_dict, read_config
from bmjax.models.vit import ViT

# Saved (hub) names -> the names transformers 5 gives the same tensors in memory (`model.state_dict()`).
IN_MEMORY_NAMES = ((r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attention.q_proj."),
                   (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attention.k_proj."),
                   (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attention.v_proj."),
                   (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
                   (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
                   (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
                   (r"^encoder\.layer\.(\d+)\.", r"layers.\1."))


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise UsageError(f"the ViT config's {name}={value!r} is neither a size nor a (height, width) pair")


def vit_sizes(config: Mapping[str, Any]) -> tuple[dict, tuple[int, int], int]:
    """(bmjax ViT fields, (height, width) of the images, channels): what a Hugging Face ViTConfig (as a
    dict) describes."""
    config = check_config(config, "vit", ("hidden_size", "num_hidden_layers", "num_attention_heads"))
    activation = config.get("hidden_act", "gelu")
    if activation != "gelu":
        raise UsageError(f"ViT hidden_act={activation!r} is not supported; bmjax's ViT uses the exact GELU "
                         "(Hugging Face's 'gelu')")
    if not config.get("qkv_bias", True):
        raise UsageError("this ViT has no query/key/value biases (qkv_bias=False); bmjax's ViT has them")
    embed, heads = config["hidden_size"], config["num_attention_heads"]
    if embed % heads or config.get("head_dim", embed // heads) != embed // heads:
        raise UsageError(f"the ViT's head_dim is not hidden_size / num_attention_heads ({embed} / {heads}); "
                         "bmjax's ViT splits the width evenly among its heads")
    patch_height, patch_width = _pair(config.get("patch_size", 16), "patch_size")
    if patch_height != patch_width:
        raise UsageError(f"the ViT's patches are {patch_height}x{patch_width}; bmjax's ViT has square patches")
    image = _pair(config.get("image_size", 224), "image_size")
    if image[0] % patch_height or image[1] % patch_width:
        raise UsageError(f"image_size={image[0]}x{image[1]} does not divide into {patch_height}x{patch_width} "
                         "patches; bmjax's ViT cuts the whole image into patches")
    return dict(patch_size=patch_height, num_layers=config["num_hidden_layers"], num_heads=heads, embed_dim=embed,
                mlp_dim=config.get("intermediate_size", 4 * embed), dropout=config.get("hidden_dropout_prob", 0.0),
                norm_epsilon=config.get("layer_norm_eps", 1e-12)), image, config.get("num_channels", 3)


class _Weights:
    """A checkpoint's tensors, read by Hugging Face name (saved or in-memory) with its shape checked."""

    def __init__(self, state_dict: Mapping[str, np.ndarray]):
        self.tensors = state_dict
        # ViTModel saves without a prefix; ViTForImageClassification puts the encoder under "vit.".
        self.prefix = "vit." if any(k.startswith("vit.") for k in state_dict) else ""

    def key(self, name: str, body: bool = True) -> str:
        if not body:
            return name
        key = self.prefix + name
        if key not in self.tensors:
            for pattern, replacement in IN_MEMORY_NAMES:
                renamed = re.sub(pattern, replacement, name)
                if renamed != name:
                    if self.prefix + renamed in self.tensors:
                        return self.prefix + renamed
                    break
        return key

    def take(self, name: str, shape: tuple, body: bool = True) -> np.ndarray:
        key = self.key(name, body)
        if key not in self.tensors:
            raise UsageError(f"the ViT weights lack {key!r}; pass a ViTForImageClassification or ViTModel "
                             "checkpoint whose config.json matches it")
        value = np.asarray(self.tensors[key])
        if value.shape != shape:
            raise UsageError(f"ViT weight {key!r} is {value.shape}, but the config implies {shape}; pass the "
                             "config.json saved with these weights")
        return value.astype(np.float32)

    def dense(self, name: str, features_in: int, features_out: int, body: bool = True) -> dict:
        """A torch Linear [out, in] as a Flax Dense: kernel [in, out], bias [out]."""
        return {"kernel": self.take(f"{name}.weight", (features_out, features_in), body).T.copy(),
                "bias": self.take(f"{name}.bias", (features_out,), body)}

    def layer_norm(self, name: str, features: int) -> dict:
        return {"scale": self.take(f"{name}.weight", (features,)), "bias": self.take(f"{name}.bias", (features,))}


def encoder_params(weights: _Weights, sizes: dict, image: tuple[int, int], channels: int) -> dict:
    """The ViT's params below the head."""
    embed, heads, mlp, patch = sizes["embed_dim"], sizes["num_heads"], sizes["mlp_dim"], sizes["patch_size"]
    head_dim = embed // heads
    positions = (image[0] // patch) * (image[1] // patch) + 1
    projection = weights.take("embeddings.patch_embeddings.projection.weight", (embed, channels, patch, patch))
    params = {"patch_embedding": {"kernel": projection.transpose(2, 3, 1, 0).copy(),
                                  "bias": weights.take("embeddings.patch_embeddings.projection.bias", (embed,))},
              "class_token": weights.take("embeddings.cls_token", (1, 1, embed)).reshape(embed),
              "position_embedding": weights.take("embeddings.position_embeddings",
                                                 (1, positions, embed)).reshape(positions, embed),
              "final_norm": weights.layer_norm("layernorm", embed)}
    for i in range(sizes["num_layers"]):
        layer = f"encoder.layer.{i}"

        def projection(name):  # query/key/value: kernel [embed, heads, head_dim], bias [heads, head_dim]
            dense = weights.dense(f"{layer}.attention.attention.{name}", embed, embed)
            return {"kernel": dense["kernel"].reshape(embed, heads, head_dim),
                    "bias": dense["bias"].reshape(heads, head_dim)}

        out = weights.dense(f"{layer}.attention.output.dense", embed, embed)
        params[f"block_{i}"] = {
            "attention_norm": weights.layer_norm(f"{layer}.layernorm_before", embed),
            "attention": {"query": projection("query"), "key": projection("key"), "value": projection("value"),
                          "out": {"kernel": out["kernel"].reshape(heads, head_dim, embed), "bias": out["bias"]}},
            "mlp_norm": weights.layer_norm(f"{layer}.layernorm_after", embed),
            "mlp": {"up": weights.dense(f"{layer}.intermediate.dense", embed, mlp),
                    "down": weights.dense(f"{layer}.output.dense", mlp, embed)},
        }
    return params


def import_vit(source: Source, config: Optional[Union[Mapping, Any, str]] = None, *,
               num_outputs: Optional[int] = None, seed: int = 0, **overrides) -> tuple[ViT, dict]:
    """(bmjax ViT, its params as float32 NumPy arrays) from a Hugging Face ViT.

    `source`: a model folder (config.json and model.safetensors or pytorch_model.bin), a .safetensors or .bin
    file, or a state dict. `config`: a dict, a `transformers.ViTConfig`, or a config.json path (default: the
    folder's). `num_outputs`: the head's classes (default: the checkpoint's classifier, else config's
    num_labels); a head of another size starts fresh. `overrides`: model fields to set, e.g.
    dtype=jnp.bfloat16, dropout=0.0, remat=True. The model takes NHWC images: transpose Hugging Face's NCHW
    `pixel_values` with `.transpose(0, 2, 3, 1)`.
    """
    hf_config = read_config(source, config, "ViT")
    sizes, image, channels = vit_sizes(hf_config)
    settable = set(ViT.__dataclass_fields__) - {"parent", "name", "num_outputs"}
    unknown = sorted(set(overrides) - settable)
    if unknown:
        raise UsageError(f"{unknown[0]!r} is not a field of bmjax's ViT; pass num_outputs= as its own argument "
                         "and other overrides by the names in bmjax.models.vit")
    weights = _Weights(load_state_dict(source))
    params = encoder_params(weights, sizes, image, channels)
    saved_classes = weights.tensors["classifier.weight"].shape[0] if "classifier.weight" in weights.tensors else None
    config_labels = len(hf_config.get("id2label") or {}) or None
    classes = num_outputs or saved_classes or config_labels or 2
    model = ViT(num_outputs=classes, **{**sizes, **overrides})
    if saved_classes == classes:
        params["head"] = weights.dense("classifier", sizes["embed_dim"], classes, body=False)
    else:
        logging.warning("the ViT checkpoint has no classifier of %d classes; the head starts from a fresh "
                        "initialisation: train it before use", classes)
        init = lambda key: nn.meta.unbox(model.init(key, jnp.zeros((1, *image, channels)))["params"]["head"])
        params["head"] = jax.tree_util.tree_map(np.asarray, jax.jit(init)(jax.random.PRNGKey(seed)))
    return model, params
