"""BERT from Hugging Face (`BertModel`, `BertForMaskedLM`, `BertForPreTraining` or
`BertForSequenceClassification` weights) as a `bmjax.models.bert` model.

    model, params = import_bert("path/to/bert-base-uncased")       # a folder saved with save_pretrained()
    logits = model.apply({"params": params}, tokens)                # tokens [batch, len], 0 = padding

`head` picks the model: "mlm" (`BertForMaskedLM`), "classifier" (`BertForSequenceClassification`),
"encoder" (`BertEncoder`: hidden states, as `BertModel.last_hidden_state`), or "auto": the head the
checkpoint holds weights for. A head the checkpoint lacks (a classifier on a pretrained encoder, say) starts
from a fresh initialisation, as in Hugging Face, and a warning names it. Torch's Linear stores weights as
[out, in], so every kernel is transposed; query, key and value get their heads as an axis of their own.
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
from bmjax.models.bert import BertEncoder, BertForMaskedLM, BertForSequenceClassification, BertSizes

# Hugging Face activation names -> bmjax's (transformer.ACTIVATIONS). BERT's "gelu" is the exact (erf) GELU.
ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu",
               "relu": "relu"}
HEADS = {"mlm": BertForMaskedLM, "classifier": BertForSequenceClassification, "encoder": BertEncoder}
MLM_BIAS = ("cls.predictions.bias", "cls.predictions.decoder.bias")  # either name, as saved
MLM_DECODER = "cls.predictions.decoder.weight"  # tied to the word embeddings; absent from most saves


def bert_sizes(config: Mapping[str, Any]) -> dict:
    """The bmjax BERT fields a Hugging Face BertConfig (as a dict) describes."""
    config = check_config(config, "bert", ("vocab_size", "hidden_size", "num_hidden_layers",
                                           "num_attention_heads"))
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise UsageError(f"position_embedding_type={config['position_embedding_type']!r} is not supported; "
                         "bmjax's BERT has absolute (learned) positions")
    if config.get("is_decoder") or config.get("add_cross_attention"):
        raise UsageError("this BERT is a decoder (is_decoder / add_cross_attention); bmjax's BERT is an encoder")
    activation = config.get("hidden_act", "gelu")
    if activation not in ACTIVATIONS:
        raise UsageError(f"BERT hidden_act={activation!r} is not supported; bmjax has {', '.join(ACTIVATIONS)}")
    pad_id = config.get("pad_token_id")
    return dict(vocab_size=config["vocab_size"], block_size=config.get("max_position_embeddings", 512),
                num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
                embed_dim=config["hidden_size"], mlp_dim=config.get("intermediate_size", 4 * config["hidden_size"]),
                dropout=config.get("hidden_dropout_prob", 0.1), type_vocab_size=config.get("type_vocab_size", 2),
                pad_id=0 if pad_id is None else pad_id, hidden_act=ACTIVATIONS[activation],
                norm_epsilon=config.get("layer_norm_eps", 1e-12))


class _Weights:
    """A checkpoint's tensors, read by Hugging Face name with its shape checked; records which were read."""

    def __init__(self, state_dict: Mapping[str, np.ndarray]):
        self.tensors = state_dict
        # BertModel saves without a prefix; the models with heads put the encoder under "bert.".
        self.prefix = "bert." if any(k.startswith("bert.") for k in state_dict) else ""

    def has(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str, shape: tuple, encoder: bool = True) -> np.ndarray:
        key = self.prefix + name if encoder else name
        if key not in self.tensors:
            raise UsageError(f"the BERT weights lack {key!r}; pass a BertModel, BertForMaskedLM or "
                             "BertForSequenceClassification checkpoint whose config.json matches it")
        value = np.asarray(self.tensors[key])
        if value.shape != shape:
            raise UsageError(f"BERT weight {key!r} is {value.shape}, but the config implies {shape}; pass the "
                             "config.json saved with these weights")
        return value.astype(np.float32)

    def dense(self, name: str, features_in: int, features_out: int, encoder: bool = True) -> dict:
        """A torch Linear [out, in] as a Flax Dense: kernel [in, out], bias [out]."""
        return {"kernel": self.take(f"{name}.weight", (features_out, features_in), encoder).T.copy(),
                "bias": self.take(f"{name}.bias", (features_out,), encoder)}

    def layer_norm(self, name: str, features: int, encoder: bool = True) -> dict:
        # Checkpoints ported from TensorFlow name the LayerNorm's scale and shift gamma and beta.
        key = (self.prefix if encoder else "") + name
        ported = f"{key}.gamma" in self.tensors and f"{key}.weight" not in self.tensors
        scale, shift = ("gamma", "beta") if ported else ("weight", "bias")
        return {"scale": self.take(f"{name}.{scale}", (features,), encoder),
                "bias": self.take(f"{name}.{shift}", (features,), encoder)}


def encoder_params(weights: _Weights, sizes: dict) -> dict:
    """`BertEncoder` params from the checkpoint's embeddings and layers."""
    embed, heads, mlp = sizes["embed_dim"], sizes["num_heads"], sizes["mlp_dim"]
    head_dim = embed // heads
    embedding = lambda name, rows: {"embedding": weights.take(f"embeddings.{name}.weight", (rows, embed))}
    params = {"token_embedding": embedding("word_embeddings", sizes["vocab_size"]),
              "position_embedding": embedding("position_embeddings", sizes["block_size"]),
              "token_type_embedding": embedding("token_type_embeddings", sizes["type_vocab_size"]),
              "embedding_norm": weights.layer_norm("embeddings.LayerNorm", embed)}
    for i in range(sizes["num_layers"]):
        layer = f"encoder.layer.{i}"

        def projection(name):  # query/key/value: kernel [embed, heads, head_dim], bias [heads, head_dim]
            dense = weights.dense(f"{layer}.attention.self.{name}", embed, embed)
            return {"kernel": dense["kernel"].reshape(embed, heads, head_dim),
                    "bias": dense["bias"].reshape(heads, head_dim)}

        out = weights.dense(f"{layer}.attention.output.dense", embed, embed)
        params[f"blocks_{i}"] = {
            "attention": {"query": projection("query"), "key": projection("key"), "value": projection("value"),
                          "out": {"kernel": out["kernel"].reshape(heads, head_dim, embed), "bias": out["bias"]}},
            "attention_norm": weights.layer_norm(f"{layer}.attention.output.LayerNorm", embed),
            "mlp": {"up": weights.dense(f"{layer}.intermediate.dense", embed, mlp),
                    "down": weights.dense(f"{layer}.output.dense", mlp, embed)},
            "mlp_norm": weights.layer_norm(f"{layer}.output.LayerNorm", embed),
        }
    return params


def mlm_params(weights: _Weights, sizes: dict, encoder: dict) -> dict:
    """The masked-LM head's params (dense, LayerNorm, output bias); the decoder is the tied embedding."""
    embed = sizes["embed_dim"]
    if weights.has(MLM_DECODER) and not np.array_equal(weights.tensors[MLM_DECODER],
                                                       encoder["token_embedding"]["embedding"]):
        raise UsageError(f"{MLM_DECODER!r} differs from the word embeddings; bmjax's BERT ties the MLM decoder "
                         "to them (tie_word_embeddings=True)")
    bias_name = next((name for name in MLM_BIAS if weights.has(name)), MLM_BIAS[0])
    return {"mlm_dense": weights.dense("cls.predictions.transform.dense", embed, embed, encoder=False),
            "mlm_norm": weights.layer_norm("cls.predictions.transform.LayerNorm", embed, encoder=False),
            "mlm_bias": weights.take(bias_name, (sizes["vocab_size"],), encoder=False)}


def _choose_head(head: str, weights: _Weights) -> str:
    if head not in ("auto", *HEADS):
        raise UsageError(f"unknown BERT head {head!r}; choose auto, {', '.join(HEADS)}")
    if head != "auto":
        return head
    if weights.has("classifier.weight"):
        return "classifier"
    if any(map(weights.has, MLM_BIAS)) or weights.has("cls.predictions.transform.dense.weight"):
        return "mlm"
    return "encoder"


def import_bert(source: Source, config: Optional[Union[Mapping, Any, str]] = None, *, head: str = "auto",
                num_outputs: Optional[int] = None, seed: int = 0, **overrides) -> tuple[BertSizes, dict]:
    """(bmjax BERT, its params as float32 NumPy arrays) from a Hugging Face BERT.

    `source`: a model folder (config.json and model.safetensors or pytorch_model.bin), a .safetensors or
    .bin file, or a state dict. `config`: a dict, a `transformers.BertConfig`, or a config.json path (default:
    the folder's). `head`: "auto", "mlm", "classifier" or "encoder" (see the module docstring).
    `num_outputs`: the classifier's classes (default: the checkpoint's classifier, else config's num_labels);
    a head of another size starts fresh. Parameters the checkpoint lacks are initialised from `seed`.
    `overrides`: model fields to set, e.g. dtype=jnp.bfloat16, dropout=0.0, remat=True.
    """
    hf_config = read_config(source, config, "BERT")
    sizes = bert_sizes(hf_config)
    config_labels = len(hf_config.get("id2label") or {}) or None
    weights = _Weights(load_state_dict(source))
    head = _choose_head(head, weights)
    settable = set(HEADS[head].__dataclass_fields__) - {"parent", "name", "num_outputs"}
    unknown = sorted(set(overrides) - settable)
    if unknown:
        raise UsageError(f"{unknown[0]!r} is not a field of bmjax's {HEADS[head].__name__}; pass num_outputs= "
                         "as its own argument and other overrides by the names in bmjax.models.bert")

    encoder = encoder_params(weights, sizes)
    missing = []  # head parameters the checkpoint lacks, to initialise
    if head == "encoder":
        model, params = BertEncoder(**{**sizes, **overrides}), encoder
    elif head == "mlm":
        model, params = BertForMaskedLM(**{**sizes, **overrides}), {"bert": encoder}
        if any(map(weights.has, MLM_BIAS)):
            params.update(mlm_params(weights, sizes, encoder))
        else:
            missing += ["mlm_dense", "mlm_norm", "mlm_bias"]
    else:
        saved_classes = weights.tensors["classifier.weight"].shape[0] if weights.has("classifier.weight") else None
        classes = num_outputs or saved_classes or config_labels or 2
        model = BertForSequenceClassification(**{**sizes, **overrides}, num_outputs=classes)
        params = {"bert": encoder}
        embed = sizes["embed_dim"]
        if weights.has(weights.prefix + "pooler.dense.weight"):
            params["pooler"] = weights.dense("pooler.dense", embed, embed)
        else:
            missing.append("pooler")
        if saved_classes == classes:
            params["classifier"] = weights.dense("classifier", embed, classes, encoder=False)
        else:
            missing.append("classifier")
    if missing:
        logging.warning("the BERT checkpoint has no weights (of these sizes) for %s; they start from a fresh "
                        "initialisation (seed %d): train them before use", ", ".join(missing), seed)
        # Compiled, returning only the missing parameters: XLA skips initialising the rest.
        init = lambda key: {name: nn.meta.unbox(model.init(key, jnp.zeros((1, 1), jnp.int32))["params"][name])
                            for name in missing}
        params.update(jax.tree_util.tree_map(np.asarray, jax.jit(init)(jax.random.PRNGKey(seed))))
    return model, params
