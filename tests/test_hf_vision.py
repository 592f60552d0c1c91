"""Hugging Face image models: a random `transformers` ResNet or ViT and its bmjax import (`bmjax.hf.resnet`,
`bmjax.hf.vit`) agree on logits and parameter counts; bad checkpoints are one-line UsageErrors; `python -m
bmjax.hf convert` writes run folders whose parameters (and BatchNorm statistics) --restore_from reads."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmjax.errors import UsageError
from conftest import run_module

torch = pytest.importorskip("torch", reason="the image importers are checked against PyTorch: pip install torch")
transformers = pytest.importorskip("transformers", reason="needs transformers (pip install transformers)")
pytest.importorskip("safetensors", reason="needs safetensors (pip install safetensors)")

from bmjax.hf import load_state_dict  # noqa: E402
from bmjax.hf.__main__ import FLAGS_FILE, convert, model_flags, zoo_name  # noqa: E402
from bmjax.hf.resnet import import_resnet, resnet_model, zoo_model  # noqa: E402
from bmjax.hf.vit import import_vit  # noqa: E402
from bmjax.models.resnet import ResNet  # noqa: E402
from bmjax.models.vit import ViT  # noqa: E402

RESNETS = {"basic": dict(layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8),
           "bottleneck": dict(layer_type="bottleneck", depths=[1, 1], hidden_sizes=[16, 32], embedding_size=8)}
VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=64)
LABELS = 5


def count(tree) -> int:
    return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(tree))


def saved_hf_model(cls, config, folder):
    """A randomly initialised Hugging Face model, every weight perturbed (so that biases and norms are not 0 and 1)
    and BatchNorm's running statistics made up, in eval mode, saved as safetensors in `folder`."""
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn_like(buffer))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand_like(buffer))
    model.save_pretrained(folder, safe_serialization=True)
    return model


def hf_logits(model, images):
    with torch.no_grad():
        return model(pixel_values=torch.tensor(images)).logits.numpy()


def nhwc(images):
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module", params=list(RESNETS))
def resnet(request, tmp_path_factory):
    """(layer type, HF ResNetForImageClassification, its save_pretrained folder)."""
    folder = tmp_path_factory.mktemp(f"hf_resnet_{request.param}")
    config = transformers.ResNetConfig(**RESNETS[request.param], num_labels=LABELS)
    return request.param, saved_hf_model(transformers.ResNetForImageClassification, config, folder), folder


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_vit")
    config = transformers.ViTConfig(**VIT, num_labels=LABELS)
    return saved_hf_model(transformers.ViTForImageClassification, config, folder), folder


def test_resnet_matches_hugging_face(resnet):
    layer_type, hf_model, folder = resnet
    images = np.random.RandomState(0).randn(2, 3, 33, 33).astype(np.float32)  # odd sides: padding must agree
    expected = hf_logits(hf_model, images)
    assert expected.shape == (2, LABELS) and expected.std() > 0.05  # spread enough that a wrong mapping shows

    model, variables = import_resnet(folder)
    assert isinstance(model, ResNet) and set(variables) == {"params", "batch_stats"}
    assert (model.stage_sizes, model.stem_width, model.bottleneck) == ((1, 1), 8, layer_type == "bottleneck")
    assert model.widths == ((4, 8) if layer_type == "bottleneck" else (8, 16))
    got = np.asarray(jax.jit(model.apply)(variables, nhwc(images)))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    # Parameters are HF's parameters; the running statistics its BatchNorm buffers (num_batches_tracked aside).
    assert count(variables["params"]) == sum(p.numel() for p in hf_model.parameters())
    running = [b for name, b in hf_model.named_buffers() if name.endswith(("running_mean", "running_var"))]
    assert count(variables["batch_stats"]) == sum(b.numel() for b in running)
    # The same tree as bmjax's own initialisation.
    fresh = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 33, 33, 3)))
    fresh = {k: jax.tree.map(lambda x: x.shape, nn.meta.unbox(v)) for k, v in fresh.items()}
    assert fresh == {k: jax.tree.map(np.shape, v) for k, v in variables.items()}

    # The in-memory state dict with its config gives the same variables.
    _, from_state_dict = import_resnet(hf_model.state_dict(), config=hf_model.config)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, from_state_dict, variables)))


def test_vit_matches_hugging_face(vit):
    hf_model, folder = vit
    images = np.random.RandomState(1).randn(2, 3, 32, 32).astype(np.float32)
    expected = hf_logits(hf_model, images)
    assert expected.shape == (2, LABELS) and expected.std() > 0.05

    model, params = import_vit(folder)
    assert isinstance(model, ViT) and model.norm_epsilon == 1e-12
    assert (model.patch_size, model.num_layers, model.num_heads, model.embed_dim, model.mlp_dim) == (8, 2, 4, 32, 64)
    got = np.asarray(jax.jit(model.apply)({"params": params}, nhwc(images)))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    assert count(params) == sum(p.numel() for p in hf_model.parameters())
    fresh = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"])
    assert jax.tree.map(lambda x: x.shape, fresh) == jax.tree.map(np.shape, params)

    # transformers 5 names the tensors otherwise in memory (layers.{i}.attention.q_proj, ...): read those too.
    state = hf_model.state_dict()
    assert "vit.layers.0.attention.q_proj.weight" in state
    _, from_state_dict = import_vit(state, config=hf_model.config)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, from_state_dict, params)))


def test_headless_checkpoints_get_a_fresh_head(tmp_path):
    resnet = saved_hf_model(transformers.ResNetModel, transformers.ResNetConfig(**RESNETS["basic"]),
                            tmp_path / "resnet")
    model, variables = import_resnet(tmp_path / "resnet", num_outputs=7)
    assert model.num_outputs == 7 and variables["params"]["head"]["kernel"].shape == (16, 7)
    assert np.std(variables["params"]["head"]["kernel"]) > 0.01  # initialised, not zeros
    # The body is the checkpoint's: bmjax's features before the head are ResNetModel's pooled output.
    images = np.random.RandomState(2).randn(1, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        pooled = resnet(pixel_values=torch.tensor(images)).pooler_output.flatten(1).numpy()
    head = variables["params"]["head"]
    logits = np.asarray(jax.jit(model.apply)(variables, nhwc(images)))
    np.testing.assert_allclose(logits, pooled @ head["kernel"] + head["bias"], atol=1e-4, rtol=0)

    saved_hf_model(transformers.ViTModel, transformers.ViTConfig(**VIT), tmp_path / "vit")  # with a pooler
    model, params = import_vit(tmp_path / "vit", num_outputs=3)
    assert model.num_outputs == 3 and params["head"]["kernel"].shape == (32, 3)


def test_bad_checkpoints_are_one_line_usage_errors(resnet, vit, tmp_path):
    _, hf_resnet, resnet_folder = resnet
    hf_vit, vit_folder = vit

    def one_line_error(match, function, *args, **kwargs):
        with pytest.raises(UsageError, match=match) as error:
            function(*args, **kwargs)
        assert "\n" not in str(error.value)

    # A folder of another model type.
    one_line_error("model_type='vit', not 'resnet'", import_resnet, vit_folder)
    one_line_error("model_type='resnet', not 'vit'", import_vit, resnet_folder)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    one_line_error("model_type='bert'", import_resnet, bert)
    one_line_error("model_type='bert'", import_vit, bert)

    # Architectures bmjax's models do not have.
    resnet_config = hf_resnet.config.to_dict()
    one_line_error("downsample_in_bottleneck", import_resnet, resnet_folder,
                   config={**resnet_config, "downsample_in_bottleneck": True})
    one_line_error("downsample_in_first_stage", import_resnet, resnet_folder,
                   config={**resnet_config, "downsample_in_first_stage": True})
    one_line_error("hidden_act='gelu'", import_resnet, resnet_folder, config={**resnet_config, "hidden_act": "gelu"})
    vit_config = hf_vit.config.to_dict()
    one_line_error("qkv_bias=False", import_vit, vit_folder, config={**vit_config, "qkv_bias": False})
    one_line_error("hidden_act='gelu_new'", import_vit, vit_folder, config={**vit_config, "hidden_act": "gelu_new"})

    # Weights that do not fit the config, or are missing.
    one_line_error(r"'resnet.embedder.embedder.convolution.weight' is \(8, 3, 7, 7\).*implies \(16, 3, 7, 7\)",
                   import_resnet, resnet_folder, config={**resnet_config, "embedding_size": 16})
    state = dict(load_state_dict(vit_folder))
    del state["vit.encoder.layer.1.intermediate.dense.bias"]
    one_line_error(r"lack 'vit\.encoder\.layer\.1\.intermediate\.dense\.bias'", import_vit, state, config=vit_config)
    one_line_error("needs its config", import_resnet, resnet_folder / "model.safetensors")
    one_line_error("needs its config", import_vit, state)


def test_zoo_names():
    """A Hugging Face ResNet of torchvision's shape converts to the zoo's --model of image_classification."""
    resnet18 = resnet_model({"model_type": "resnet", "layer_type": "basic", "depths": [2, 2, 2, 2],
                             "hidden_sizes": [64, 128, 256, 512]}, 1000)
    resnet50 = resnet_model(transformers.ResNetConfig().to_dict(), 1000)  # microsoft/resnet-50's architecture
    assert (zoo_model(resnet18), zoo_model(resnet50)) == ("resnet18", "resnet50")
    assert zoo_model(resnet_model({"model_type": "resnet", **RESNETS["basic"]}, 10)) is None

    flags, warnings = model_flags(resnet50, "experiments.image_classification", zoo_name("resnet", resnet50))
    assert sorted(flags) == ["--bn_momentum=0.9", "--model=resnet50", "--preactivation=false", "--stem=imagenet"]
    assert warnings == []


def test_convert_resnet_command_writes_a_run_folder(tmp_path):
    """`python -m bmjax.hf convert` on a ResNet: parameters and BatchNorm statistics as --restore_from reads them."""
    from bmjax.train.checkpoint import load_params

    folder, out = tmp_path / "hf", tmp_path / "run"
    config = transformers.ResNetConfig(**RESNETS["basic"], num_labels=LABELS)
    saved_hf_model(transformers.ResNetForImageClassification, config, folder)
    result = run_module("bmjax.hf", "convert", str(folder), f"--workdir={out}",
                        "--experiment=experiments.image_classification")
    assert result.returncode == 0, result.stderr
    assert f"resnet with {count(import_resnet(folder)[1]['params']):,} parameters" in result.stdout
    assert "none of the zoo's named networks" in result.stdout  # a toy ResNet: warned, not a --model
    flags = (out / FLAGS_FILE).read_text().splitlines()
    assert {"--stem=imagenet", "--bn_momentum=0.9", "--preactivation=false"} <= set(flags)

    model, imported = import_resnet(folder)
    fresh = jax.tree.map(np.asarray, nn.meta.unbox(model.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))))
    params, model_state, step = load_params(str(out), fresh["params"], {"batch_stats": fresh["batch_stats"]})
    assert step == 0
    restored = {"params": params, **model_state}
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, restored, imported)))

    again = run_module("bmjax.hf", "convert", str(folder), f"--workdir={out}")
    assert again.returncode != 0 and "already holds checkpoints" in again.stderr + again.stdout


def test_convert_vit(vit, tmp_path):
    from bmjax.train.checkpoint import load_params

    _, folder = vit
    written = convert(folder, tmp_path / "run", experiment="experiments.vit_mnist")
    assert written["model_type"] == "vit" and written["vocab_size"] is None
    for flag in ("--patch_size=8", "--num_layers=2", "--num_heads=4", "--embed_dim=32", "--mlp_dim=64"):
        assert flag in written["flags"]
    assert any(w.startswith("norm_epsilon=1e-12") for w in written["warnings"])  # vit_mnist has no such flag

    model, imported = import_vit(folder)
    fresh = jax.tree.map(np.asarray, nn.meta.unbox(model.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))))
    params, model_state, _ = load_params(str(tmp_path / "run"), fresh["params"], {})
    assert model_state == {}
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params, imported)))
