"""Text to image: the word tokenizer and captions, the captioned canvases and their held-out pairs, the VQ-VAE's
round trip and the reconstruction task, sampling with a key per row and a token range (equal to recomputing the
sequence at every step), the task that scores image tokens alone, and the experiment end to end on the digits:
classifier, tokenizer and transformer trained in one call, evaluation by drawing, pictures, --mode=sample and its
errors, and pmap and mesh training and drawing alike."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_metrics, run_module
from PIL import Image

from bmjax import data, tasks
from bmjax.data import canvases, load_tokenizer
from bmjax.data.text import WordTokenizer
from bmjax.errors import UsageError
from bmjax.generate import _split, generate, sample_token
from bmjax.models.gpt import GPT
from bmjax.models.vqvae import VQVAE
from bmjax.train.text_to_image import CaptionedImages, row_keys
from experiments.text_to_image import TextToImageConfig, main

TINY = dict(dataset="digits_pairs", num_layers=2, num_heads=2, embed_dim=32, batch_size=32, downsample=1,
            tokenizer_epochs=10, classifier_epochs=10, validation_split=None, warmup_steps=10, parallel="single",
            log_every_steps=20, eval_batch_size=512)


def test_word_tokenizer_round_trips_saves_and_names_unknown_words(tmp_path):
    tokenizer = WordTokenizer(("seven", "left", "of", "two"))
    ids = tokenizer.encode("Seven  left of two")
    assert ids.tolist() == [1, 2, 3, 4] and tokenizer.decode([0, 0, *ids]) == "seven left of two"
    tokenizer.save(str(tmp_path / "words"))
    assert load_tokenizer(str(tmp_path / "words")).encode("two of two").tolist() == [4, 3, 4]
    with pytest.raises(UsageError, match="unknown word 'eight'; the captions use: seven left of two"):
        tokenizer.encode("eight left of two")


def test_captions_name_both_classes_in_either_order_and_read_back():
    row, column = canvases.captions_of("mnist_pairs", "row"), canvases.captions_of("fashion_mnist_pairs", "column")
    assert row.caption(7, 2, flipped=False) == "seven left of two" and row.caption(7, 2, flipped=True) == \
        "two right of seven"
    assert column.caption(5, 8, flipped=True) == "a bag below a sandal"
    for captions in (row, column):
        for first, second in ((7, 2), (3, 3), (9, 0)):
            for flipped in (False, True):
                assert captions.classes(captions.caption(first, second, flipped)) == (first, second)
    assert row.length == 4 and column.length == 7
    ids = row.encode("two right of seven")
    assert len(ids) == 4 and row.tokenizer().decode(ids) == "two right of seven"
    assert column.encode("a bag below a sandal")[:2].tolist() == [0, 0], "left-padded"
    assert row.classes("seven of left two") is None
    with pytest.raises(UsageError, match="has 5 words; captions have 1 to 4"):
        row.encode("seven left of two two")


def test_canvases_hold_two_images_and_keep_the_held_out_pairs_out_of_training():
    pairs = data.load("digits_pairs", validation_split=0.1)
    base = data.load("digits", validation_split=0.1)
    table = canvases.held_out_table(10)
    captions = canvases.captions_of("digits_pairs", "row")
    tokenizer = pairs.tokenizer
    for name in ("train", "validation", "test"):
        split, images = getattr(pairs, name), getattr(base, name)[np.arange(len(getattr(base, name)))]
        whole = split[np.arange(len(split))]
        y, canvas = whole["y"], whole["x"]["image"]
        assert canvas.shape[1:] == (8, 16, 1)
        held = table[y[:, 0], y[:, 1]]
        if name == "train":
            assert not held.any() and len(split) == len(images["x"])
        else:
            assert held.mean() == pytest.approx(1 / 6, abs=0.02), "one held-out canvas for every five seen"
        for i in range(0, len(split), 37):
            assert captions.classes(tokenizer.decode(whole["x"]["caption"][i])) == tuple(y[i])
        # Each base image is the first of one canvas; the second is an image of the class y names.
        np.testing.assert_array_equal(canvas[: len(images["x"]), :, :8], images["x"])
        seconds = canvas[:, :, 8:]
        matches = [np.flatnonzero((images["x"] == s).all(axis=(1, 2, 3))) for s in seconds[:20]]
        assert all(len(m) and images["y"][m[0]] == c for m, c in zip(matches, y[:20, 1]))


def test_vqvae_tokenizer_round_trip_is_its_reconstruction():
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 8, 16, 1)), jnp.float32)
    model = VQVAE(channels=1, num_codes=16, code_dim=8, features=16, downsample=1, residual_blocks=1)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), images)
    codes = model.apply(variables, images, method=VQVAE.encode)
    assert codes.shape == (3, 4, 8) and codes.dtype == jnp.int32 and 0 <= codes.min() and codes.max() < 16
    decoded = model.apply(variables, codes, method=VQVAE.decode)
    outputs = model.apply(variables, images)
    np.testing.assert_allclose(decoded[..., None], np.clip(outputs["reconstruction"], 0, 1), atol=1e-5)
    np.testing.assert_array_equal(outputs["code_counts"].sum(1), 32)  # each example's 4x8 codes
    assert outputs["auxiliary_loss"].shape == (3,) and (outputs["auxiliary_loss"] >= 0).all()
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, images)["reconstruction"]))(variables["params"])
    assert float(jnp.abs(grads["down_0"]["kernel"].value).sum()) > 0, "straight through to the encoder"
    with pytest.raises(UsageError, match="must divide by 2"):
        model.apply(variables, images[:, :7], method=VQVAE.encode)


def test_reconstruction_task_reports_error_psnr_and_code_use():
    task = tasks.Reconstruction(channels=1)
    targets = jnp.zeros((2, 4, 4))
    outputs = {"reconstruction": jnp.full((2, 4, 4), 0.1), "auxiliary_loss": jnp.array([0.5, 0.0]),
               "code_counts": jnp.array([[3.0, 1.0, 0.0], [0.0, 3.0, 1.0]])}
    losses, weights = task.loss(outputs, targets)
    np.testing.assert_allclose(losses, [0.51, 0.01], rtol=1e-5)
    summary = task.summarize(task.metric_sums(outputs, targets, losses, weights, jnp.ones(2)))
    assert summary["mse"] == pytest.approx(0.01) and summary["psnr"] == pytest.approx(20.0)
    shares = np.array([3, 4, 1]) / 8
    assert summary["code_perplexity"] == pytest.approx(np.exp(-np.sum(shares * np.log(shares))))
    assert summary["codes_used"] == 3 and task.prepare({"x": targets}, None)["y"] is targets


def test_captioned_images_task_scores_the_image_tokens_alone():
    task = CaptionedImages(vocab_size=10, caption_length=3)
    batch = task.prepare({"x": jnp.arange(12).reshape(2, 6)}, None)
    np.testing.assert_array_equal(batch["x"], [[0, 1, 2, 3, 4], [6, 7, 8, 9, 10]])
    np.testing.assert_array_equal(batch["y"]["targets"], [[1, 2, 3, 4, 5], [7, 8, 9, 10, 11]])
    np.testing.assert_array_equal(batch["y"]["weights"], [[0, 0, 1, 1, 1]] * 2)  # the targets after the caption


@pytest.fixture(scope="module")
def gpt():
    model = GPT(vocab_size=12, block_size=10, num_layers=2, num_heads=2, embed_dim=16)
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 10), jnp.int32))["params"]


def test_drawing_with_a_key_per_row_is_recomputing_the_sequence_and_ignores_the_other_rows(gpt):
    model, params = gpt
    prompts = jnp.array([[1, 2, 3], [3, 2, 1], [2, 2, 2]])
    keys = row_keys(5, 3)
    drawn = generate(model, params, prompts, 7, keys, top_k=3, token_range=(4, 12))
    assert drawn.shape == (3, 10) and (drawn[:, 3:] >= 4).all(), "image tokens only"
    alone = generate(model, params, prompts[1:], 7, keys[1:], top_k=3, token_range=(4, 12))
    np.testing.assert_array_equal(alone, drawn[1:])  # rows 1 and 2 without row 0 draw as in the batch
    steps = _split(keys, 7)  # the key of each step of each row, as generate draws them
    tokens = jnp.zeros((3, 10), jnp.int32).at[:, :3].set(prompts)
    apply = jax.jit(model.apply)
    for t in range(3, 10):  # without a cache: the whole sequence at every step (causal: later zeros unread)
        logits = apply({"params": params}, tokens)[:, t - 1]
        tokens = tokens.at[:, t].set(sample_token(logits, steps[t - 3], top_k=3, token_range=(4, 12)))
    np.testing.assert_array_equal(tokens, drawn)


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory):
    """The experiment on the digits: its classifier and VQ-VAE trained first by the experiment itself."""
    workdir = tmp_path_factory.mktemp("t2i")
    return workdir, main(TextToImageConfig(workdir=str(workdir), train_steps=60, eval_every_steps=60, **TINY))


def test_text_to_image_trains_its_tokenizer_then_reports_what_it_draws(t2i_run):
    workdir, result = t2i_run
    tokenizer = read_metrics(workdir / "image_tokenizer")
    assert tokenizer[-1]["mse"] < tokenizer[0]["mse"] and tokenizer[-1]["codes_used"] > 8
    assert result["image_tokens"] == 32 and result["image_codes"] == 64
    test = result["test"]
    for name in ("pair_accuracy", "pair_accuracy_held_out", "cell_accuracy"):
        assert 0 <= test[name] <= 1 and 0 <= test[name + "_reconstructed"] <= 1
    assert test["cell_accuracy_reconstructed"] > 0.5, "the classifier reads the tokenizer's reconstructions"
    assert 0 < test["fd_classifier_reconstructed"] < test["fd_classifier"]
    assert test["accuracy"] > 0.2, "next image token"
    assert [r["step"] for r in read_metrics(workdir, "test")] == [60]
    assert sorted(p.name for p in (workdir / "pictures").iterdir()) == ["drawings_0000060.png"]
    drawings = np.asarray(Image.open(workdir / "pictures" / "drawings_0000060.png"))
    assert drawings.shape[0] == 8 * 3 * 10 - 3 * 2, "8 captions, rows of 8x16 canvases scaled 3x"


def test_sample_mode_draws_the_prompt_and_refuses_words_it_does_not_know(t2i_run, tmp_path, capsys):
    workdir, _ = t2i_run
    out = tmp_path / "sevens.png"
    written = main(TextToImageConfig(workdir=str(workdir), mode="sample", prompt="seven left of two", num_samples=4,
                                     out=str(out)))
    assert written == str(out) and np.asarray(Image.open(out)).shape == (2 * 10 - 2, 2 * 18 - 2)
    assert "the classifier reads" in capsys.readouterr().out
    bad = run_module("experiments.text_to_image", f"--workdir={workdir}", "--mode=sample", "--prompt=seven beside two")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "error: unknown word 'beside'; the captions use: zero one two three four five six seven eight nine left of "
        "right")
    with pytest.raises(UsageError, match="has no captions; choose one of mnist_pairs"):
        TextToImageConfig(workdir=str(tmp_path), dataset="mnist").validate()
    with pytest.raises(UsageError, match=r"--top_k must lie in 0..64 \(the image codes; 0: all\)"):
        TextToImageConfig(workdir=str(tmp_path), top_k=65).validate()


def test_pmap_and_mesh_train_and_draw_alike(t2i_run, tmp_path):
    """The transformer's losses and what it draws on 8 devices under pmap (its sums reduced over the axis by the
    program) equal those on a mesh (reduced by the compiler)."""
    workdir, _ = t2i_run
    results = {}
    for parallel in ("pmap", "mesh"):
        config = TextToImageConfig(workdir=str(tmp_path / parallel), train_steps=10, eval_every_steps=10,
                                   image_tokenizer=str(workdir / "image_tokenizer"),
                                   classifier=str(workdir / "classifier"), **{**TINY, "parallel": parallel})
        results[parallel] = main(config)
    pmap, mesh = results["pmap"], results["mesh"]
    assert pmap["devices"] == mesh["devices"] == 8
    np.testing.assert_allclose(read_metrics(tmp_path / "pmap")[-1]["loss"], read_metrics(tmp_path / "mesh")[-1]["loss"],
                               rtol=1e-5)
    np.testing.assert_allclose(pmap["test"]["loss"], mesh["test"]["loss"], rtol=1e-5)
    for name in ("pair_accuracy", "pair_accuracy_held_out", "cell_accuracy", "cell_accuracy_reconstructed"):
        # A token drawn at a tie of logits summed in another order may differ: a few cells at most.
        assert pmap["test"][name] == pytest.approx(mesh["test"][name], abs=5e-3), name
    assert pmap["test"]["cell_accuracy_reconstructed"] > 0.5
