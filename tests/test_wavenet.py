"""WaveNet: mu-law coding, causality and the receptive field, conditioning, Fast WaveNet generation against naive
generation, the clip examples, and the experiment end to end on generated WAV clips."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_result, run_module
from scipy.io import wavfile

from bmjax.data import audio
from bmjax.errors import UsageError
from bmjax.models import wavenet
from experiments import wavenet as experiment

MODEL = wavenet.WaveNet(dilations=(1, 2, 4, 1, 2), num_digits=10, num_speakers=3, residual_channels=8,
                        gate_channels=8, skip_channels=16, condition_dim=4)
# Random keys are "rbg" ones: threefry's random bits compile several times slower on CPU.
KEY = jax.random.key(0, impl="rbg")


def inputs(tokens, digit, speaker):
    return {"audio": jnp.asarray(tokens, jnp.int32), "digit": jnp.asarray(digit, jnp.int32),
            "speaker": jnp.asarray(speaker, jnp.int32)}


@pytest.fixture(scope="module")
def params():
    example = inputs(np.zeros((1, 8)), [0], [0])
    return nn.meta.unbox(jax.jit(MODEL.init)(KEY, example))["params"]


@jax.jit
def logits_of(params, x):
    return MODEL.apply({"params": params}, x)


def random_tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(0, wavenet.CLASSES, shape)


def test_mu_law_round_trip_stays_within_the_quantisation_bound():
    mu = wavenet.MU
    x = np.concatenate([np.linspace(-1, 1, 20001), np.random.default_rng(0).uniform(-1, 1, 5000)]).astype(np.float32)
    tokens = wavenet.mu_law_encode(x)
    assert tokens.min() == 0 and tokens.max() == mu and np.all(np.diff(tokens[:20001]) >= 0)
    # Half a level of F = sign(x) ln(1 + mu|x|) / ln(1 + mu) is 1/mu; through F's inverse that is at most
    # (1/mu + |x|) ((1 + mu)^(1/mu) - 1): about 8.6e-5 at silence, 2.2% of full scale at the loudest.
    bound = (1 / mu + np.abs(x)) * ((1 + mu) ** (1 / mu) - 1)
    error = np.abs(wavenet.mu_law_decode(tokens) - x)
    assert np.all(error <= bound + 1e-6) and error.max() > 0.5 * bound.max()
    levels = np.arange(mu + 1)
    np.testing.assert_array_equal(wavenet.mu_law_encode(wavenet.mu_law_decode(levels)), levels)
    np.testing.assert_array_equal(np.asarray(wavenet.mu_law_encode(jnp.asarray(x))), tokens)  # jax agrees
    assert wavenet.mu_law_encode(np.float32(0)) == wavenet.SILENCE
    np.testing.assert_array_equal(wavenet.mu_law_encode(np.array([-3.0, 3.0])), [0, mu])  # clipped


def test_an_output_never_depends_on_a_later_input(params):
    tokens = random_tokens((2, 40))
    t, field = 17, MODEL.receptive_field
    assert field == 1 + sum(MODEL.dilations)
    changed = tokens.copy()
    changed[:, t] = (changed[:, t] + 100) % wavenet.CLASSES
    before = np.asarray(logits_of(params, inputs(tokens, [1, 2], [0, 1])))
    after = np.asarray(logits_of(params, inputs(changed, [1, 2], [0, 1])))
    np.testing.assert_array_equal(before[:, :t], after[:, :t])  # earlier outputs: untouched
    assert np.all(np.abs(before[:, t:t + field] - after[:, t:t + field]).max(axis=-1) > 0)  # within the field
    np.testing.assert_array_equal(before[:, t + field:], after[:, t + field:])  # past the receptive field


def test_the_digit_and_the_speaker_condition_every_output(params):
    tokens = random_tokens((2, 40), seed=1)  # the shape of the test above: one compiled program
    base = np.asarray(logits_of(params, inputs(tokens, [3, 3], [1, 1])))
    digit = np.asarray(logits_of(params, inputs(tokens, [3, 8], [1, 1])))
    speaker = np.asarray(logits_of(params, inputs(tokens, [3, 3], [1, 2])))
    np.testing.assert_array_equal(base[0], digit[0])  # each clip reads its own conditions only
    np.testing.assert_array_equal(base[0], speaker[0])
    for other in (digit[1], speaker[1]):
        assert np.all(np.abs(base[1] - other).max(axis=-1) > 1e-4)  # at every position


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_fast_generation_gives_the_samples_of_naive_generation(params, kernel_size):
    model = MODEL if kernel_size == 2 else MODEL.clone(kernel_size=3, dilations=(1, 2))
    if kernel_size != 2:  # taps at t - 2d, t - d and t
        params = nn.meta.unbox(jax.jit(model.init)(KEY, inputs(np.zeros((1, 8)), [0], [0])))["params"]
    digits, speakers, key = np.array([0, 7, 7]), np.array([2, 0, 1]), jax.random.key(3, impl="rbg")
    length = 2 * model.receptive_field + 3  # the queues wrap around many times, the naive window slides
    fast = np.asarray(wavenet.generate(model, params, digits, speakers, length, key))
    naive = np.asarray(wavenet.naive_generate(model, params, digits, speakers, length, key))
    assert fast.shape == (3, length) and fast.min() >= 0 and fast.max() < wavenet.CLASSES
    np.testing.assert_array_equal(fast, naive)
    assert len(np.unique(fast)) > length // 2  # samples of an untrained model, not a constant
    assert not np.array_equal(fast[1], fast[2])  # the speaker alone changes them


def test_every_sample_of_a_clip_is_scored_once_with_its_context():
    clip = np.random.default_rng(2).uniform(-0.5, 0.5, 50).astype(np.float32)
    clips = audio.Clips(waveforms=(clip, clip[:7]), labels=np.array([4, 5]), speakers=np.array([0, 1]),
                        speaker_names=("ann", "bob"), files=("4_ann_0.wav", "5_bob_0.wav"), sample_rate=8000)
    examples = experiment.clip_windows(clips, np.array([0, 1]), window=16, context=5)
    x, y = examples.x, examples.y
    tokens = wavenet.mu_law_encode(clip)
    previous = np.concatenate([[wavenet.SILENCE], tokens[:-1]])  # silence before the first sample
    pad = lambda a: np.pad(a, (0, 16 - len(a)), constant_values=wavenet.SILENCE)
    # The first example scores samples 0-15; each later one the next 11, reading the 5 before them.
    for row, (first, scored) in enumerate([(0, 0), (11, 16), (22, 27), (33, 38), (44, 49)]):
        np.testing.assert_array_equal(x["audio"][row], pad(previous[first:first + 16]))
        np.testing.assert_array_equal(y["targets"][row], pad(tokens[first:first + 16]))
        np.testing.assert_array_equal(np.flatnonzero(y["weights"][row]), np.arange(scored, min(first + 16, 50)) - first)
        assert x["digit"][row] == 4 and x["speaker"][row] == 0
    np.testing.assert_array_equal(y["targets"][:5][y["weights"][:5] > 0], tokens)  # every sample once, in order
    assert len(examples) == 6 and y["weights"][5].sum() == 7 and x["speaker"][5] == 1


def test_bad_settings_are_one_line_errors(tmp_path):
    base = experiment.WaveNetConfig(workdir=str(tmp_path))
    with pytest.raises(UsageError, match="--window=100 leaves no sample to score"):
        base.replace(window=100).validate()
    with pytest.raises(UsageError, match="--digit must be one of 0-9"):
        base.replace(digit=12).validate()
    with pytest.raises(UsageError, match="--speakers must name distinct speakers"):
        base.replace(speakers="ann,ann").validate()
    with pytest.raises(UsageError, match="--speaker=zoe is not one of the run's speakers: ann, bob"):
        experiment.conditions(base.replace(speaker="zoe"), ("ann", "bob"))
    clips = audio.Clips(waveforms=(np.zeros(4, np.float32),), labels=np.array([1]), speakers=np.array([0]),
                        speaker_names=("zoe",), files=("1_zoe_0.wav",), sample_rate=8000)
    with pytest.raises(UsageError, match="clips of speakers zoe are not among --speakers=ann,bob"):
        experiment.speaker_ids(clips, ("ann", "bob"))
    assert experiment.entropy_bits(np.ones(256)) == pytest.approx(8.0)


def write_clips(folder, speakers=("ann", "bob"), digits=(0, 1), indices=(0, 5, 6), samples=240):
    """FSDD-named WAV files: a tone per digit, louder or softer per speaker, with a little noise."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    t = np.arange(samples) / 8000
    for digit in digits:
        for s, speaker in enumerate(speakers):
            for index in indices:
                wave = (0.3 + 0.3 * s) * np.sin(2 * np.pi * (300 + 400 * digit) * t) + 0.01 * rng.normal(size=samples)
                wavfile.write(folder / f"{digit}_{speaker}_{index}.wav", 8000, (wave * 32767).astype(np.int16))
    return folder


def test_trains_on_wav_clips_then_samples_wav_files(tmp_path):
    clips = write_clips(tmp_path / "clips")
    workdir = tmp_path / "run"
    tiny = ["--stacks=1", "--layers_per_stack=2", "--residual_channels=4", "--gate_channels=4",
            "--skip_channels=8", "--condition_dim=2", "--window=64", "--batch_size=8", "--train_steps=6",
            "--steps_per_call=1"]  # one compiled train step, not also a scan of them
    out = run_module("experiments.wavenet", f"--workdir={workdir}", f"--manual_dir={clips}", "--speakers=ann,bob",
                     "--parallel=single", *tiny)
    assert out.returncode == 0, out.stderr
    result = read_result(workdir)
    test = result["test"]
    assert result["steps"] == 6 and result["program"] == "Supervised"
    assert test["bits_per_sample"] == pytest.approx(test["loss"] / math.log(2))
    # The entropy of the test clips' mu-law classes, as the run counted them.
    tokens = np.concatenate([wavenet.mu_law_encode(audio.read_wav(str(f))[0]) for f in sorted(clips.glob("*_0.wav"))])
    expected = experiment.entropy_bits(np.bincount(tokens, minlength=256))
    assert test["unigram_entropy_bits"] == pytest.approx(expected, rel=1e-6)

    out = run_module("experiments.wavenet", f"--workdir={workdir}", "--mode=sample", "--digit=1", "--num_samples=3",
                     "--sample_seconds=0.01")
    assert out.returncode == 0, out.stderr
    record = json.loads((workdir / "samples" / "samples.json").read_text())
    assert record["digits"] == [1, 1, 1] and record["speakers"] == ["ann", "bob", "ann"]
    for name in record["files"]:
        rate, samples = wavfile.read(workdir / "samples" / name)
        assert rate == 8000 and samples.dtype == np.int16 and samples.shape == (80,)
        assert np.abs(samples).max() > 0
