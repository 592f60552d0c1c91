"""Recurrent networks: the seeds' Elman update by hand, padding, direction, a state carried across windows (in
the model, and through the runner under every strategy and a resume), and the experiments end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_metrics, read_result, run_module, saved_state

from bmjax import data
from bmjax.data.sources import Dataset, DatasetInfo
from bmjax.data.text import WindowSource
from bmjax.models.rnn import CELLS, ElmanCell, RecurrentClassifier, RecurrentLM, RecurrentStack
from bmjax.train.loop import run
from experiments.char_rnn import CharRnn
from experiments.mnist1d import PRESETS, Mnist1d


def test_the_elman_cell_is_the_seeds_formula():
    cell = ElmanCell(3)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 4))
    layer = RecurrentStack("elman", 3)
    variables = layer.init(jax.random.PRNGKey(0), x)
    outputs, _ = layer.apply(variables, x)
    p = {k: np.asarray(v, np.float64) for k, v in variables["params"]["layer_0"].items()}
    h = np.zeros((2, 3))
    for t in range(5):  # h_t = tanh(W_hh h_(t-1) + W_xh x_t + b_h)
        h = np.tanh(h @ p["W_hh"].T + np.asarray(x[:, t], np.float64) @ p["W_xh"].T + p["b_h"])
        np.testing.assert_allclose(outputs[:, t], h, rtol=1e-5, atol=1e-6)
    assert cell.num_feature_axes == 1 and p["W_xh"].shape == (3, 4) and p["W_hh"].shape == (3, 3)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_initialisation_draws_every_weight_and_bias_within_its_bound(cell):
    stack = RecurrentStack(cell, 9, cell_init="torch")
    params = jax.tree.leaves(stack.init(jax.random.PRNGKey(0), jnp.ones((2, 3, 4)))["params"])
    assert all(np.abs(p).max() <= 1 / 3 for p in params)
    assert all(np.abs(p).max() > 0.25 for p in params), "biases too are drawn, not zero"


@pytest.mark.parametrize("cell, pooling", [("elman", "last"), ("lstm", "mean"), ("gru", "max")])
def test_padding_changes_nothing(cell, pooling):
    model = RecurrentClassifier(3, cell=cell, hidden_size=5, num_layers=2, bidirectional=True, pooling=pooling,
                                vocab_size=12, embed_dim=4)
    short = jnp.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 11]])
    longer = jnp.pad(short, ((0, 0), (0, 4)))
    variables = model.init(jax.random.PRNGKey(0), short)
    np.testing.assert_allclose(model.apply(variables, short), model.apply(variables, longer), atol=1e-6)
    other = short.at[0, 3:].set(7)  # what the padding hides does matter once it is read
    assert not np.allclose(model.apply(variables, short)[0], model.apply(variables, other)[0])


def test_the_backward_direction_reads_each_row_from_its_last_valid_step():
    stack = RecurrentStack("gru", 4, bidirectional=True)
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 6, 3))
    variables = stack.init(jax.random.PRNGKey(0), x)
    outputs, _ = stack.apply(variables, x, lengths=jnp.array([4]))
    backward = RecurrentStack("gru", 4)  # the backward cell alone, run over the valid steps reversed
    params = {"layer_0": variables["params"]["backward_0"]}
    reversed_outputs, _ = backward.apply({"params": params}, x[:, 3::-1])
    np.testing.assert_allclose(outputs[:, :4, 4:], reversed_outputs[:, ::-1], rtol=1e-5, atol=1e-6)
    forward_outputs, _ = backward.apply({"params": {"layer_0": variables["params"]["forward_0"]}}, x)
    np.testing.assert_allclose(outputs[:, :, :4], forward_outputs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_a_carried_state_makes_two_windows_one_sequence(cell):
    tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 16), 0, 20)
    carried = RecurrentLM(20, cell=cell, hidden_size=8, num_layers=2, embed_dim=6, carry_rows=2)
    variables = carried.init(jax.random.PRNGKey(0), tokens[:1, :8])
    assert not np.any(jax.tree.leaves(variables["carry"])[0])
    first, state = carried.apply(variables, tokens[:, :8], train=True, mutable=["carry"])
    second, _ = carried.apply({**variables, **state}, tokens[:, 8:], train=True, mutable=["carry"])
    stateless = RecurrentLM(20, cell=cell, hidden_size=8, num_layers=2, embed_dim=6)
    whole = stateless.apply({"params": variables["params"]}, tokens)
    np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), whole, rtol=1e-5, atol=1e-5)
    fresh = carried.apply(variables, tokens[:, 8:])  # evaluation reads each window from zeros
    np.testing.assert_allclose(fresh, stateless.apply({"params": variables["params"]}, tokens[:, 8:]), atol=1e-6)
    assert not np.allclose(fresh, second, atol=1e-4)


@pytest.fixture(scope="module")
def counting_text():
    """A registered corpus (no files): a stream of 4,000 tokens in which each token says how many came since the
    last 0, so the next one is predictable from far back."""

    @data.register("tests_counting_text")
    def read(spec):
        rng = np.random.default_rng(0)
        gaps = rng.integers(3, 12, 400)
        stream = np.concatenate([np.arange(g) for g in gaps]).astype(np.int32)
        split = lambda a, b: WindowSource(stream[a:b], spec.block_size)
        n = len(stream)
        info = DatasetInfo(spec.name, "language_model", (spec.block_size,), 12, None, 12)
        return Dataset(info, split(0, int(0.8 * n)), split(int(0.8 * n), int(0.9 * n)), split(int(0.9 * n), n))

    yield "tests_counting_text"
    data.registry.REGISTRY.pop("tests_counting_text")


def char_rnn(workdir, **overrides):
    settings = dict(dataset="tests_counting_text", block_size=8, batch_size=16, hidden_size=16, num_layers=1,
                    embed_dim=8, train_steps=12, log_every_steps=1, eval_every_steps=12, checkpoint_every_steps=6,
                    learning_rate=1e-2, lr_schedule="constant")
    return CharRnn(workdir=str(workdir), **{**settings, **overrides})


def test_the_runner_reads_in_order_carries_the_state_alike_under_every_strategy_and_resumes(tmp_path, counting_text):
    from bmjax.train import supervised
    from bmjax.train.program import Context

    plan = supervised.build(char_rnn(tmp_path / "plan"), Context(str(tmp_path / "plan"), None, 1, False))
    assert plan.program.reads_in_order and plan.dataset.train.stride == 8, "consecutive non-overlapping windows"

    losses = {}
    for parallel in ("single", "pmap", "mesh"):
        run(char_rnn(tmp_path / parallel, parallel=parallel))
        losses[parallel] = [r["loss"] for r in read_metrics(tmp_path / parallel)]
    np.testing.assert_allclose(losses["pmap"], losses["single"], rtol=1e-5)
    np.testing.assert_allclose(losses["mesh"], losses["single"], rtol=1e-5)
    carry = [v for k, v in saved_state(tmp_path / "single").items() if "carry" in k]
    assert carry and carry[0].shape == (16, 16) and np.abs(carry[0]).max() > 0, "the checkpoint holds each row's state"

    stateless = tmp_path / "stateless"
    run(char_rnn(stateless, carry_state=False))
    assert read_metrics(stateless)[-1]["loss"] != losses["single"][-1]

    # Resumed from step 6, its carry included. (A run of 6 steps scans other lengths than one of 12: the numbers
    # agree to float rounding; a carry started from zeros would move step 7's loss by far more.)
    halves = tmp_path / "halves"
    run(char_rnn(halves, train_steps=6))
    result = run(char_rnn(halves, extend=True))
    np.testing.assert_allclose([r["loss"] for r in read_metrics(halves)], losses["single"], rtol=1e-5)
    np.testing.assert_allclose(result["validation"]["loss"], read_result(tmp_path / "single")["validation"]["loss"],
                               rtol=1e-5)


def test_a_carried_state_needs_whole_batches(tmp_path, counting_text):
    from bmjax.errors import UsageError

    with pytest.raises(UsageError, match="drop --grad_accum_steps=2"):
        run(char_rnn(tmp_path / "accum", grad_accum_steps=2))


def test_char_rnn_trains_and_samples(tmp_path, shakespeare_dir):
    workdir = tmp_path / "char_rnn"
    common = [f"--workdir={workdir}", f"--data_dir={shakespeare_dir}"]
    out = run_module("experiments.char_rnn", *common, "--hidden_size=32", "--num_layers=1", "--block_size=32",
                     "--batch_size=16", "--train_steps=40", "--eval_every_steps=40", "--log_every_steps=20",
                     "--learning_rate=1e-2", "--parallel=single")
    assert out.returncode == 0, out.stderr
    result = read_result(workdir)
    assert result["validation"]["loss"] < np.log(65) - 0.5, "learns beyond a uniform guess over the characters"
    out = run_module("experiments.char_rnn", *common, "--mode=sample", "--prompt=ROMEO:", "--max_new_tokens=40",
                     "--num_samples=2")
    assert out.returncode == 0, out.stderr
    samples = [s for s in out.stdout.split("--- sample ")[1:]]
    assert len(samples) == 2 and all("ROMEO:" in s for s in samples)
    assert all(len(s.split("\n", 1)[1].rstrip("\n")) == len("ROMEO:") + 40 for s in samples)


def test_mnist1d_models_and_the_shuffled_set(tmp_path):
    shuffled = data.load("mnist1d_shuffled", data_dir=str(tmp_path))
    plain = data.load("mnist1d", data_dir=str(tmp_path))
    order = np.random.RandomState(42).permutation(40)
    np.testing.assert_array_equal(shuffled.test.x, plain.test.x[:, order])
    out = run_module("experiments.mnist1d", f"--workdir={tmp_path / 'gru'}", "--preset=gru", "--train_steps=150",
                     f"--data_dir={tmp_path}", "--eval_every_steps=150")
    assert out.returncode == 0, out.stderr
    assert read_result(tmp_path / "gru")["test"]["accuracy"] > 0.3
    for preset in ("cnn", "mlp"):
        config = Mnist1d(workdir=str(tmp_path / preset), data_dir=str(tmp_path), train_steps=150,
                         eval_every_steps=150, parallel="single", **PRESETS[preset])
        assert run(config)["test"]["accuracy"] > 0.3, preset


def test_sst2_rnn_end_to_end(tmp_path):
    from conftest import SHARED_DATA

    sst2 = SHARED_DATA / "sst2"
    if not sst2.is_dir():
        pytest.skip(f"the genuine SST-2 files are not in {sst2}")
    workdir = tmp_path / "sst2"
    out = run_module("experiments.sst2_rnn", f"--workdir={workdir}", f"--manual_dir={sst2}", "--train_steps=60",
                     "--hidden_size=16", "--embed_dim=16", "--vocab_size=500", "--log_every_steps=30",
                     "--eval_every_steps=60", "--learning_rate=1e-2", "--dropout=0.1")
    assert out.returncode == 0, out.stderr
    result = read_result(workdir)
    assert result["test"]["accuracy"] > 0.55
