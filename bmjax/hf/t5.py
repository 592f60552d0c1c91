"""T5 from Hugging Face (`T5ForConditionalGeneration` weights) as a `bmjax.models.t5.T5`.

    model, params = import_t5("path/to/t5-small")       # a folder saved with save_pretrained()
    logits = model.apply({"params": params}, {"inputs": ..., "targets": ...})

torch's Linear stores [out, in]; Flax kernels are [in, out], with the attention's head axis split out:
query/key/value [embed, heads, head_dim], out [heads, head_dim, embed]. The relative-position bias lives in
the first layer of each stack, as in Hugging Face.
"""

from typing import Any, Mapping, Optional, Union

import numpy as np

from bmjax.errors import UsageError
from bmjax.hf import Source, check_config, load_state_dict, read_config
from bmjax.models.t5 import T5

REQUIRED = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")


def ties_embeddings(config: Mapping[str, Any]) -> bool:
    """Whether logits come as in T5 v1.0: from the tied embedding, decoder output scaled by d_model**-0.5.
    transformers 5 says so in `scale_decoder_outputs` (and always sets tie_word_embeddings); earlier versions in
    `tie_word_embeddings`."""
    return bool(config.get("scale_decoder_outputs", config.get("tie_word_embeddings", True)))


def t5_model(config: Mapping[str, Any]) -> T5:
    """The bmjax T5 a T5 config describes (gated-gelu v1.1 configs become activation="geglu")."""
    config = check_config(_as_dict(config), "t5", REQUIRED)
    feed_forward = config.get("feed_forward_proj", "relu")
    if feed_forward not in ("relu", "gated-gelu"):
        raise UsageError(f"feed_forward_proj {feed_forward!r} is not supported; bmjax's T5 has 'relu' (v1.0) and "
                         "'gated-gelu' (v1.1)")
    return T5(vocab_size=config["vocab_size"], num_layers=config["num_layers"], num_heads=config["num_heads"],
              embed_dim=config["d_model"], head_dim=config["d_kv"], mlp_dim=config["d_ff"],
              num_decoder_layers=config.get("num_decoder_layers"), dropout=config.get("dropout_rate", 0.1),
              activation="geglu" if feed_forward == "gated-gelu" else "relu", tie_embeddings=ties_embeddings(config),
              relative_buckets=config.get("relative_attention_num_buckets", 32),
              relative_max_distance=config.get("relative_attention_max_distance", 128),
              norm_epsilon=config.get("layer_norm_epsilon", 1e-6))


def t5_params(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
    """bmjax T5 params (float32 NumPy arrays) from a `T5ForConditionalGeneration` state dict."""
    config = _as_dict(config)
    weights = load_state_dict(state_dict)

    def array(name):
        if name not in weights:
            raise UsageError(f"the T5 weights lack {name!r}; pass a T5ForConditionalGeneration checkpoint whose "
                             "config.json matches it")
        return np.asarray(weights[name], np.float32)

    heads, head_dim, embed = config["num_heads"], config["d_kv"], config["d_model"]
    gated = config.get("feed_forward_proj", "relu") == "gated-gelu"

    def attention(prefix):
        split_in = lambda w: w.T.reshape(embed, heads, head_dim)
        return {"query": {"kernel": split_in(array(f"{prefix}.q.weight"))},
                "key": {"kernel": split_in(array(f"{prefix}.k.weight"))},
                "value": {"kernel": split_in(array(f"{prefix}.v.weight"))},
                "out": {"kernel": array(f"{prefix}.o.weight").T.reshape(heads, head_dim, embed)}}

    def mlp(prefix):
        if gated:
            layers = {"gate": array(f"{prefix}.wi_0.weight"), "up": array(f"{prefix}.wi_1.weight")}
        else:
            layers = {"up": array(f"{prefix}.wi.weight")}
        layers["down"] = array(f"{prefix}.wo.weight")
        return {name: {"kernel": w.T} for name, w in layers.items()}

    norm = lambda name: {"scale": array(name)}

    def stack(side, num_layers, sublayers):
        params = {"relative_bias": {"embedding": array(
                      f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")},
                  "final_norm": norm(f"{side}.final_layer_norm.weight")}
        for i in range(num_layers):
            params[f"layer_{i}"] = sublayers(f"{side}.block.{i}.layer")
        return params

    encoder_layer = lambda p: {"attention_norm": norm(f"{p}.0.layer_norm.weight"),
                               "attention": attention(f"{p}.0.SelfAttention"),
                               "mlp_norm": norm(f"{p}.1.layer_norm.weight"),
                               "mlp": mlp(f"{p}.1.DenseReluDense")}
    decoder_layer = lambda p: {"self_attention_norm": norm(f"{p}.0.layer_norm.weight"),
                               "self_attention": attention(f"{p}.0.SelfAttention"),
                               "cross_attention_norm": norm(f"{p}.1.layer_norm.weight"),
                               "cross_attention": attention(f"{p}.1.EncDecAttention"),
                               "mlp_norm": norm(f"{p}.2.layer_norm.weight"),
                               "mlp": mlp(f"{p}.2.DenseReluDense")}
    params = {"token_embedding": {"embedding": array("shared.weight")},
              "encoder": stack("encoder", config["num_layers"], encoder_layer),
              "decoder": stack("decoder", config.get("num_decoder_layers") or config["num_layers"], decoder_layer)}
    if not ties_embeddings(config):
        # An unscaled head; transformers 5 may keep it tied to the shared embedding and leave it out.
        params["head"] = {"kernel": array("lm_head.weight" if "lm_head.weight" in weights else "shared.weight").T}
    return params


def import_t5(source: Source, config: Optional[Union[Mapping, Any]] = None) -> tuple[T5, dict]:
    """(bmjax T5, its params) from a Hugging Face T5.

    `source`: a model folder (config.json and weights), a .safetensors or .bin file, or a state dict.
    `config`: a dict or `transformers.T5Config`; default: the folder's config.json (required for files and
    state dicts).
    """
    config = read_config(source, config, "T5")
    return t5_model(config), t5_params(load_state_dict(source), config)


def _as_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)
