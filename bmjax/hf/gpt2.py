"""GPT-2 from Hugging Face (`GPT2LMHeadModel` or `GPT2Model` weights) as a `bmjax.models.gpt.GPT`.

    model, params = import_gpt2("path/to/gpt2")          # a folder saved with save_pretrained()
    logits = model.apply({"params": params}, tokens)

GPT-2's Conv1D layers store weights as [in, out], as Flax does, so no weight is transposed; the fused
`c_attn` projection is split into query, key and value, and heads become their own axis.
"""

from typing import Any, Mapping, Optional, Union

import numpy as np

from bmjax.errors import UsageError
from bmjax.hf import Source, check_config, load_state_dict, read_config
from bmjax.models.gpt import GPT

# GPT-2's activation names -> bmjax's. gelu_new, gelu_fast and gelu_pytorch_tanh are all GELU's tanh
# approximation, written three ways; "gelu" is the exact (erf) GELU.
ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "gelu": "gelu_exact",
               "relu": "relu"}


def gpt2_model(config: Mapping[str, Any]) -> GPT:
    """The bmjax GPT with the architecture a GPT-2 config.json describes (float32, no dropout)."""
    config = check_config(config, "gpt2", ("n_embd", "n_layer", "n_head", "vocab_size"))
    positions = config.get("n_positions", config.get("n_ctx"))
    if positions is None:
        raise UsageError("the GPT-2 config lacks 'n_positions'; pass the model's config.json")
    activation = config.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise UsageError(f"GPT-2 activation_function={activation!r} is not supported; "
                         f"bmjax has {', '.join(ACTIVATIONS)}")
    embed_dim = config["n_embd"]
    hidden_dim = config.get("n_inner") or 4 * embed_dim
    if hidden_dim % embed_dim:
        raise UsageError(f"n_inner={hidden_dim} is not a multiple of n_embd={embed_dim}; bmjax's MLP width is "
                         "mlp_ratio * embed_dim")
    if not config.get("scale_attn_weights", True) or config.get("scale_attn_by_inverse_layer_idx", False):
        raise UsageError("this GPT-2 scales attention scores other than by 1/sqrt(head_dim) "
                         "(scale_attn_weights / scale_attn_by_inverse_layer_idx); bmjax's GPT does not")
    return GPT(vocab_size=config["vocab_size"], block_size=positions, num_layers=config["n_layer"],
               num_heads=config["n_head"], embed_dim=embed_dim, mlp_ratio=hidden_dim // embed_dim,
               positions="learned", activation=ACTIVATIONS[activation],
               tie_embeddings=config.get("tie_word_embeddings", True), use_bias=True,
               norm_epsilon=config.get("layer_norm_epsilon", 1e-5))


def gpt2_params(state_dict: Mapping[str, np.ndarray], model: GPT) -> dict:
    """bmjax GPT params (float32 NumPy arrays) from GPT-2's Hugging Face tensors, checking every shape."""
    prefix = "transformer." if any(k.startswith("transformer.") for k in state_dict) else ""  # LM head model

    def take(name: str, shape: tuple) -> np.ndarray:
        key = prefix + name if not name.startswith("lm_head.") else name
        if key not in state_dict:
            raise UsageError(f"the GPT-2 weights lack {key!r}; pass a GPT2LMHeadModel or GPT2Model checkpoint "
                             "whose config.json matches it")
        value = np.asarray(state_dict[key])
        if value.shape != shape:
            raise UsageError(f"GPT-2 weight {key!r} is {value.shape}, but the config implies {shape}; "
                             "pass the config.json saved with these weights")
        return value.astype(np.float32)

    embed, heads, layers = model.embed_dim, model.num_heads, model.num_layers
    head_dim, hidden = embed // heads, model.mlp_ratio * embed
    layer_norm = lambda name: {"scale": take(f"{name}.weight", (embed,)), "bias": take(f"{name}.bias", (embed,))}
    params = {"token_embedding": {"embedding": take("wte.weight", (model.vocab_size, embed))},
              "position_embedding": {"embedding": take("wpe.weight", (model.block_size, embed))},
              "final_norm": layer_norm("ln_f")}
    for i in range(layers):
        h = f"h.{i}"
        # c_attn: x [.., embed] @ W [embed, 3 * embed] gives query | key | value side by side, heads in order.
        qkv_kernel = take(f"{h}.attn.c_attn.weight", (embed, 3 * embed)).reshape(embed, 3, heads, head_dim)
        qkv_bias = take(f"{h}.attn.c_attn.bias", (3 * embed,)).reshape(3, heads, head_dim)
        attention = {name: {"kernel": qkv_kernel[:, j], "bias": qkv_bias[j]}
                     for j, name in enumerate(("query", "key", "value"))}
        attention["out"] = {"kernel": take(f"{h}.attn.c_proj.weight", (embed, embed)).reshape(heads, head_dim, embed),
                            "bias": take(f"{h}.attn.c_proj.bias", (embed,))}
        params[f"block_{i}"] = {
            "attention_norm": layer_norm(f"{h}.ln_1"),
            "attention": attention,
            "mlp_norm": layer_norm(f"{h}.ln_2"),
            "mlp": {"up": {"kernel": take(f"{h}.mlp.c_fc.weight", (embed, hidden)),
                           "bias": take(f"{h}.mlp.c_fc.bias", (hidden,))},
                    "down": {"kernel": take(f"{h}.mlp.c_proj.weight", (hidden, embed)),
                             "bias": take(f"{h}.mlp.c_proj.bias", (embed,))}},
        }
    if not model.tie_embeddings:
        params["head"] = {"kernel": take("lm_head.weight", (model.vocab_size, embed)).T.copy()}
    return params


def import_gpt2(source: Source, config: Optional[Union[Mapping, Any]] = None) -> tuple[GPT, dict]:
    """(bmjax GPT, its params) from a Hugging Face GPT-2.

    `source`: a model folder (config.json and weights), a .safetensors or .bin file, or a state dict.
    `config`: a dict or `transformers.GPT2Config`; default: the folder's config.json (required for files
    and state dicts).
    """
    config = read_config(source, config, "GPT-2")
    model = gpt2_model(config)
    return model, gpt2_params(load_state_dict(source), model)

