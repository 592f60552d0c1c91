"""ResNet from Hugging Face (`ResNetForImageClassification` or `ResNetModel` weights, model_type "resnet",
such as microsoft/resnet-18 and microsoft/resnet-50) as a `bmjax.models.resnet.ResNet`.

    model, variables = import_resnet("path/to/resnet-50")      # a folder saved with save_pretrained()
    logits = model.apply(variables, images)                      # images [batch, H, W, C]: NHWC, not NCHW

`variables` holds "params" (convolution kernels, BatchNorm scale and bias, the head) and "batch_stats" (the
BatchNorm running mean and variance, PyTorch buffers). Hugging Face's ResNet is torchvision's "v1.5" layer for
layer: the 7x7/2 stem (width `embedding_size`) and 3x3/2 max pool, basic or bottleneck layers with the stride
on the 3x3 convolution, a 1x1 convolution and BatchNorm as the shortcut where width or resolution change,
BatchNorm epsilon 1e-5, average pooling and a dense head. Its names map onto bmjax's (indices from 0):

    embedder.embedder.convolution, .normalization         stem_conv, stem_norm
    encoder.stages.{i}.layers.{j}.layer.{k}.convolution    stage_{i}/block_{j}/conv_{k} (.normalization: norm_{k})
    encoder.stages.{i}.layers.{j}.shortcut.convolution     stage_{i}/block_{j}/shortcut_conv (and shortcut_norm)
    classifier.1                                           head

A bottleneck's `hidden_sizes` are its output widths, 4x bmjax's stage `widths`. Torch's convolutions store
kernels [out, in, kh, kw]; Flax's are [kh, kw, in, out]. A checkpoint without a classifier (`ResNetModel`),
or with one of another size than `num_outputs`, gets a freshly initialised head, and a warning names it.
"""

from collections.abc import Mapping
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bmjax.errors import UsageError
from bmjax.hf import Source, check_config, load_state_dict, read_config
from bmjax.models.resnet import IMAGENET_PRESETS, ResNet

LAYER_TYPES = ("basic", "bottleneck")
REDUCTION = 4  # a bottleneck's inner width is its output's / 4
# The fields a zoo model (--model=resnet18 .. resnet152 of experiments.image_classification) sets.
ZOO_FIELDS = ("stage_sizes", "widths", "bottleneck", "stem_width", "shortcut")


def resnet_model(config: Mapping[str, Any], num_outputs: int, **overrides) -> ResNet:
    """The bmjax ResNet with the architecture a Hugging Face ResNetConfig (as a dict) describes."""
    config = check_config(config, "resnet", ("hidden_sizes", "depths"))
    layer_type = config.get("layer_type", "bottleneck")
    if layer_type not in LAYER_TYPES:
        raise UsageError(f"ResNet layer_type={layer_type!r} is not supported; bmjax's ResNet has "
                         f"{' and '.join(LAYER_TYPES)} layers")
    activation = config.get("hidden_act", "relu")
    if activation != "relu":
        raise UsageError(f"ResNet hidden_act={activation!r} is not supported; bmjax's ResNet uses relu")
    if config.get("downsample_in_bottleneck", False):
        raise UsageError("this ResNet strides the bottleneck's first 1x1 convolution (downsample_in_bottleneck="
                         "True, ResNet v1); bmjax's ResNet strides the 3x3 convolution (v1.5), as microsoft/resnet-*")
    if config.get("downsample_in_first_stage", False):
        raise UsageError("this ResNet strides its first stage (downsample_in_first_stage=True); bmjax's ResNet "
                         "keeps the stem's resolution there, as microsoft/resnet-*")
    depths, hidden_sizes = list(config["depths"]), list(config["hidden_sizes"])
    if not depths or len(depths) != len(hidden_sizes):
        raise UsageError(f"the ResNet config has {len(depths)} depths but {len(hidden_sizes)} hidden_sizes; "
                         "pass the model's config.json")
    bottleneck = layer_type == "bottleneck"
    if bottleneck and any(size % REDUCTION for size in hidden_sizes):
        raise UsageError(f"bottleneck hidden_sizes={hidden_sizes} are not all multiples of {REDUCTION}; bmjax's "
                         f"bottleneck widens its inner width by exactly {REDUCTION}")
    widths = tuple(size // REDUCTION for size in hidden_sizes) if bottleneck else tuple(hidden_sizes)
    settable = set(ResNet.__dataclass_fields__) - {"parent", "name", "num_outputs", *ZOO_FIELDS, "stem",
                                                   "preactivation"}
    unknown = sorted(set(overrides) - settable)
    if unknown:
        raise UsageError(f"{unknown[0]!r} is not a ResNet field an import may set; choose from "
                         f"{', '.join(sorted(settable))}, and num_outputs= as its own argument")
    return ResNet(num_outputs=num_outputs, stage_sizes=tuple(depths), widths=widths, bottleneck=bottleneck,
                  stem="imagenet", stem_width=config.get("embedding_size", 64), **overrides)


class _Weights:
    """A checkpoint's tensors, read by Hugging Face name with its shape checked."""

    def __init__(self, state_dict: Mapping[str, np.ndarray]):
        self.tensors = state_dict
        # ResNetModel saves without a prefix; ResNetForImageClassification puts the network under "resnet.".
        self.prefix = "resnet." if any(k.startswith("resnet.") for k in state_dict) else ""

    def take(self, name: str, shape: tuple, body: bool = True) -> np.ndarray:
        key = self.prefix + name if body else name
        if key not in self.tensors:
            raise UsageError(f"the ResNet weights lack {key!r}; pass a ResNetForImageClassification or ResNetModel "
                             "checkpoint whose config.json matches it")
        value = np.asarray(self.tensors[key])
        if value.shape != shape:
            raise UsageError(f"ResNet weight {key!r} is {value.shape}, but the config implies {shape}; pass the "
                             "config.json saved with these weights")
        return value.astype(np.float32)

    def conv_layer(self, name: str, features_in: int, features_out: int, kernel: int) -> tuple[dict, dict, dict]:
        """A Hugging Face conv + BatchNorm pair: (conv params, norm params, norm batch stats)."""
        weight = self.take(f"{name}.convolution.weight", (features_out, features_in, kernel, kernel))
        norm = lambda what: self.take(f"{name}.normalization.{what}", (features_out,))
        return ({"kernel": weight.transpose(2, 3, 1, 0).copy()}, {"scale": norm("weight"), "bias": norm("bias")},
                {"mean": norm("running_mean"), "var": norm("running_var")})


def resnet_variables(weights: _Weights, model: ResNet, channels: int) -> tuple[dict, dict]:
    """(params, batch_stats) of the network below the head."""
    params, stats = {}, {}

    def put(tree: dict, path: tuple, value: dict):
        for key in path[:-1]:
            tree = tree.setdefault(key, {})
        tree[path[-1]] = value

    def conv_norm(hf_name: str, path: tuple, conv: str, norm: str, features_in, features_out, kernel):
        conv_params, norm_params, norm_stats = weights.conv_layer(hf_name, features_in, features_out, kernel)
        put(params, (*path, conv), conv_params)
        put(params, (*path, norm), norm_params)
        put(stats, (*path, norm), norm_stats)

    conv_norm("embedder.embedder", (), "stem_conv", "stem_norm", channels, model.stem_width, 7)
    features = model.stem_width
    for i, (num_blocks, width) in enumerate(zip(model.stage_sizes, model.widths)):
        for j in range(num_blocks):
            layer, path = f"encoder.stages.{i}.layers.{j}", (f"stage_{i}", f"block_{j}")
            stride = 2 if i > 0 and j == 0 else 1
            # (in, out, kernel) of each convolution of the residual branch, as bmjax's ResidualBlock has them
            convs = ([(features, width, 1), (width, width, 3), (width, REDUCTION * width, 1)] if model.bottleneck
                     else [(features, width, 3), (width, width, 3)])
            for k, (features_in, features_out, kernel) in enumerate(convs):
                conv_norm(f"{layer}.layer.{k}", path, f"conv_{k}", f"norm_{k}", features_in, features_out, kernel)
            out = convs[-1][1]
            if stride != 1 or features != out:
                conv_norm(f"{layer}.shortcut", path, "shortcut_conv", "shortcut_norm", features, out, 1)
            elif f"{weights.prefix}{layer}.shortcut.convolution.weight" in weights.tensors:
                raise UsageError(f"the ResNet weights have a shortcut projection in {layer}, where the config "
                                 "implies none; pass the config.json saved with these weights")
            features = out
    return params, stats


def zoo_model(model: ResNet) -> Optional[str]:
    """The zoo's name for `model`'s architecture (resnet18 .. resnet152: `--model` of
    experiments.image_classification), or None if it is none of them."""
    defaults = {name: ResNet.__dataclass_fields__[name].default for name in ZOO_FIELDS}
    for name, preset in IMAGENET_PRESETS.items():
        if all(tuple(getattr(model, field)) == tuple(value) if isinstance(value, tuple)
               else getattr(model, field) == value for field, value in {**defaults, **preset}.items()):
            return name
    return None


def import_resnet(source: Source, config: Optional[Union[Mapping, Any, str]] = None, *,
                  num_outputs: Optional[int] = None, seed: int = 0, **overrides) -> tuple[ResNet, dict]:
    """(bmjax ResNet, its variables {"params", "batch_stats"} as float32 NumPy arrays) from a Hugging Face ResNet.

    `source`: a model folder (config.json and model.safetensors or pytorch_model.bin), a .safetensors or .bin
    file, or a state dict. `config`: a dict, a `transformers.ResNetConfig`, or a config.json path (default: the
    folder's). `num_outputs`: the head's classes (default: the checkpoint's classifier, else config's
    num_labels); a head of another size starts fresh from `seed`. `overrides`: model fields to set, e.g.
    dtype=jnp.bfloat16, remat=True, bn_momentum=0.99. The model takes NHWC images: transpose Hugging Face's
    NCHW `pixel_values` with `.transpose(0, 2, 3, 1)`.
    """
    hf_config = read_config(source, config, "ResNet")
    resnet_model(hf_config, 1, **overrides)  # a config bmjax cannot build fails before the weights are read
    weights = _Weights(load_state_dict(source))
    saved_classes = (weights.tensors["classifier.1.weight"].shape[0] if "classifier.1.weight" in weights.tensors
                     else None)
    config_labels = len(hf_config.get("id2label") or {}) or None
    classes = num_outputs or saved_classes or config_labels or 2
    model = resnet_model(hf_config, classes, **overrides)
    channels = hf_config.get("num_channels", 3)
    params, stats = resnet_variables(weights, model, channels)
    features = model.widths[-1] * (REDUCTION if model.bottleneck else 1)
    if saved_classes == classes:
        params["head"] = {"kernel": weights.take("classifier.1.weight", (classes, features), body=False).T.copy(),
                          "bias": weights.take("classifier.1.bias", (classes,), body=False)}
    else:
        logging.warning("the ResNet checkpoint has no classifier of %d classes; the head starts from a fresh "
                        "initialisation (seed %d): train it before use", classes, seed)
        # Compiled, returning only the head: XLA skips initialising the rest.
        init = lambda key: nn.meta.unbox(model.init(key, jnp.zeros((1, 32, 32, channels)))["params"]["head"])
        params["head"] = jax.tree_util.tree_map(np.asarray, jax.jit(init)(jax.random.PRNGKey(seed)))
    return model, {"params": params, "batch_stats": stats}
