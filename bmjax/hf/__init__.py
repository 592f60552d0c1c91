"""Import pretrained Hugging Face `transformers` checkpoints into bmjax models.

`load_state_dict` reads a checkpoint's tensors as NumPy arrays by their Hugging Face names, from a model
folder (config.json with model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin),
a single .safetensors or torch .bin/.pt file, or an in-memory state dict. Safetensors are read without
torch; torch pickles need torch. Architecture modules (`bmjax.hf.gpt2`, `bmjax.hf.bert`) map those names
onto bmjax's Flax parameters, and `python -m bmjax.hf convert SOURCE --workdir=OUT` writes a bmjax run
folder that `--restore_from=OUT` fine-tunes from.
"""

import json
import os
from collections.abc import Mapping
from typing import Any, Union

import numpy as np

from bmjax.errors import UsageError

# The weight files a Hugging Face model folder may hold, in the order they are looked for.
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
CONFIG_FILE = "config.json"

Source = Union[str, os.PathLike, Mapping]


def load_config(folder: Union[str, os.PathLike]) -> dict[str, Any]:
    """The model folder's config.json as a dict."""
    path = os.path.join(os.fspath(folder), CONFIG_FILE)
    if not os.path.isdir(folder):
        raise UsageError(f"{os.fspath(folder)} is not a folder; pass a Hugging Face model folder with {CONFIG_FILE}")
    if not os.path.isfile(path):
        raise UsageError(f"{path} does not exist; save the model with save_pretrained() or pass its config")
    return _read_json(path, "re-save it with save_pretrained()")


def _read_json(path: Union[str, os.PathLike], fix: str) -> dict[str, Any]:
    """A config file's JSON; UsageError ending in `fix` if it is not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UsageError(f"{os.fspath(path)} is not valid JSON ({e}); {fix}") from None


def read_config(source: Source, config: Any, architecture: str) -> dict[str, Any]:
    """The Hugging Face config as a dict: `config` (a dict, a transformers PretrainedConfig, a config.json
    path or a model folder), or else the config.json of the model folder `source`."""
    if config is None:
        if not isinstance(source, Mapping) and not os.path.exists(source):
            raise UsageError(f"{os.fspath(source)} does not exist; pass a Hugging Face {architecture} model folder")
        if isinstance(source, Mapping) or not os.path.isdir(source):
            raise UsageError(f"a {architecture} weights file or state dict needs its config: pass config= "
                             "(config.json's path or contents, or the transformers config), or the model folder")
        return load_config(source)
    if hasattr(config, "to_dict"):  # a transformers PretrainedConfig
        return config.to_dict()
    if isinstance(config, (str, os.PathLike)):
        if os.path.isdir(config):
            return load_config(config)
        if not os.path.isfile(config):
            raise UsageError(f"{os.fspath(config)} does not exist; pass the model's config.json")
        return _read_json(config, "pass the model's config.json")
    if isinstance(config, Mapping):
        return dict(config)
    raise UsageError(f"config= is a {type(config).__name__}; pass a dict, a transformers config or a config.json path")


def check_config(config: Mapping[str, Any], model_type: str, required: tuple[str, ...]) -> dict[str, Any]:
    """`config` as a dict, checked to describe a `model_type` model with every key in `required`."""
    config = dict(config)
    if config.get("model_type", model_type) != model_type:
        raise UsageError(f"config.json has model_type={config['model_type']!r}, not {model_type!r}; import it with "
                         "the importer for that architecture")
    for key in required:
        if key not in config:
            raise UsageError(f"the {model_type} config lacks {key!r}; pass the model's config.json")
    return config


def load_state_dict(source: Source) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as {Hugging Face name: NumPy array}.

    `source`: a model folder, a .safetensors file, a torch .bin/.pt file, or a dict of torch tensors or
    arrays (e.g. `model.state_dict()`). bfloat16 tensors come back as `ml_dtypes.bfloat16` arrays from
    safetensors and as float32 from torch.
    """
    if isinstance(source, Mapping):
        return {str(name): _to_numpy(value, name) for name, value in source.items()}
    if not isinstance(source, (str, os.PathLike)):
        raise UsageError(f"cannot read weights from a {type(source).__name__}; pass a model folder, a "
                         ".safetensors or .bin file, or a state dict")
    path = os.fspath(source)
    if os.path.isdir(path):
        return _load_folder(path)
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist; pass a Hugging Face model folder or a weights file")
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
    if path.endswith((".bin", ".pt", ".pth")):
        return _load_torch(path)
    if path.endswith(".index.json"):
        return _load_sharded(path)
    raise UsageError(f"{path}: unknown weights format; pass a .safetensors, .bin or .pt file or a model folder")


def _load_folder(folder: str) -> dict[str, np.ndarray]:
    for name, load in ((SAFETENSORS_FILE, _load_safetensors), (SAFETENSORS_INDEX, _load_sharded),
                       (TORCH_FILE, _load_torch), (TORCH_INDEX, _load_sharded)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return load(path)
    raise UsageError(f"{folder} holds no weights: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {TORCH_FILE}")


def _load_sharded(index_path: str) -> dict[str, np.ndarray]:
    """Reads every shard an index.json names (its "weight_map": tensor name -> shard file)."""
    with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
        raise UsageError(f"{index_path} has no weight_map; re-save the model with save_pretrained()")
    folder = os.path.dirname(index_path)
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            raise UsageError(f"{shard_path}, named in {index_path}, does not exist; download every shard")
        tensors.update(_load_safetensors(shard_path) if shard.endswith(".safetensors") else _load_torch(shard_path))
    return tensors


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise UsageError("reading .safetensors needs the safetensors package: pip install safetensors") from None
    try:
        return load_file(path)
    except Exception as e:  # bfloat16 or a damaged file: safetensors.numpy cannot make every dtype
        if "BF16" in str(e) or "bfloat16" in str(e).lower():
            return _load_safetensors_raw(path)
        raise UsageError(f"cannot read {path}: {e}") from None


def _load_safetensors_raw(path: str) -> dict[str, np.ndarray]:
    """Reads a safetensors file directly (8-byte header length, JSON header, raw little-endian data), for
    the dtypes NumPy lacks (bfloat16, float8) that `ml_dtypes` provides."""
    import ml_dtypes

    dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    with open(path, "rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_length))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"]).copy()
    return tensors


def _load_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise UsageError(f"reading {os.path.basename(path)} needs PyTorch: pip install torch, or save the model "
                         "as safetensors (save_pretrained(..., safe_serialization=True))") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"cannot read {path} as a torch state dict: {e}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # a training checkpoint that wraps the weights
    if not isinstance(state, Mapping):
        raise UsageError(f"{path} holds a {type(state).__name__}, not a state dict; save model.state_dict()")
    return {str(name): _to_numpy(value, name) for name, value in state.items()}


def _to_numpy(value, name) -> np.ndarray:
    """A torch tensor (any device or dtype; bfloat16 becomes float32) or array-like as a NumPy array."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception:
        raise UsageError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor or array") from None
