"""Audio: WAV files and FSDD's official split, the log-mel front end against SciPy, the spoken-digit classifier
end to end on generated recordings, and bad folders and flags."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal
from conftest import SHARED_DATA, read_result, run_module

import bmjax
from bmjax import data
from bmjax.data import audio, tfds_source
from bmjax.errors import UsageError
from bmjax.models import audio as audio_models
from experiments.spoken_digits import SpokenDigits

FSDD = SHARED_DATA / "fsdd" / "recordings"
RATE = 8000


def tone(digit: int, samples: int, amplitude: float = 0.5, rate: int = RATE) -> np.ndarray:
    """A clip of `digit`'s own pitch, 250 Hz apart, with a little noise: what the tests' classifiers tell apart."""
    t = np.arange(samples) / rate
    noise = np.random.default_rng(digit * 1000 + samples).normal(0, 0.01, samples)
    return amplitude * np.sin(2 * np.pi * 250 * (digit + 1) * t) + noise


def write_fsdd(folder, digits=range(3), speakers=("alice", "bob"), indices=range(7)) -> dict:
    """FSDD-named 16-bit WAVs of tones, clip lengths varying with the index; {file name: int16 samples}."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for digit in digits:
        for s, speaker in enumerate(speakers):
            for index in indices:
                samples = (tone(digit, 1500 + 100 * index, 0.3 + 0.2 * s) * 32767).astype(np.int16)
                name = f"{digit}_{speaker}_{index}.wav"
                scipy.io.wavfile.write(folder / name, RATE, samples)
                written[name] = samples
    return written


# Reading.

def test_wav_files_are_read_as_one_float_channel_in_the_unit_range(tmp_path):
    cases = {"int16": (np.array([16384, -32768, 0], np.int16), [0.5, -1.0, 0.0]),
             "uint8": (np.array([192, 0, 128], np.uint8), [0.5, -1.0, 0.0]),
             "int32": (np.array([2 ** 30, -2 ** 31, 0], np.int32), [0.5, -1.0, 0.0]),
             "float32": (np.array([0.25, -0.75, 1.0], np.float32), [0.25, -0.75, 1.0]),
             "stereo": (np.array([[16384, 0], [-32768, -32768], [8192, 8192]], np.int16), [0.25, -1.0, 0.25])}
    for name, (samples, expected) in cases.items():
        scipy.io.wavfile.write(tmp_path / f"{name}.wav", RATE, samples)
        waveform, rate = audio.read_wav(str(tmp_path / f"{name}.wav"))
        assert rate == RATE and waveform.dtype == np.float32, name
        np.testing.assert_allclose(waveform, expected, err_msg=name)

    # A 16 kHz file read at 8 kHz: half the samples, the same pitch.
    scipy.io.wavfile.write(tmp_path / "wide.wav", 16000, (tone(3, 16000, rate=16000) * 32767).astype(np.int16))
    waveform, rate = audio.read_wav(str(tmp_path / "wide.wav"), sample_rate=RATE)
    assert rate == RATE and waveform.shape == (8000,)
    assert np.argmax(np.abs(np.fft.rfft(waveform))) == 1000  # 1 Hz bins: the 1 kHz tone of digit 3


def test_fsdd_folder_is_split_by_recording_index(tmp_path):
    written = write_fsdd(tmp_path / "recordings")
    (tmp_path / "recordings" / "README.md").write_text("not a recording")
    splits = audio.read_fsdd(str(tmp_path))  # the repository's folder: its recordings/ is read
    train, test = splits["train"], splits["test"]
    assert len(test) == 3 * 2 * 5 and len(train) == 3 * 2 * 2
    assert all(int(f[:-4].split("_")[2]) < 5 for f in test.files)
    assert all(int(f[:-4].split("_")[2]) >= 5 for f in train.files)
    assert test.files[:6] == tuple(f"0_alice_{i}.wav" for i in range(5)) + ("0_bob_0.wav",)
    assert test.speaker_names == ("alice", "bob") and train.sample_rate == RATE
    np.testing.assert_array_equal(test.labels, [int(f[0]) for f in test.files])
    np.testing.assert_array_equal(test.speakers, [f.split("_")[1] == "bob" for f in test.files])
    for name, waveform in zip(train.files, train.waveforms):
        np.testing.assert_array_equal(waveform, written[name] / np.float32(32768))

    dataset = data.load("fsdd", manual_dir=str(tmp_path / "recordings"), validation_split=0.25)
    assert dataset.info.feature_shape == (8000,) and dataset.info.class_names == audio.DIGITS
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (9, 3, 30)
    assert dataset.test.x.shape == (30, 8000) and dataset.test.x.dtype == np.float32
    np.testing.assert_array_equal(dataset.test.x, audio.fix_length(test.waveforms, 8000))


def test_clips_are_padded_or_cropped_to_a_fixed_length():
    short, long = np.arange(1, 4, dtype=np.float32), np.arange(1, 9, dtype=np.float32)
    np.testing.assert_array_equal(audio.fix_length([short, long], 6),
                                  [[0, 1, 2, 3, 0, 0], [2, 3, 4, 5, 6, 7]])
    np.testing.assert_array_equal(audio.fix_length([short, long], 6, "start"),
                                  [[1, 2, 3, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(audio.fix_length([long], 8), [long])
    with pytest.raises(UsageError, match="--clip_align=middle is not one of: center, start"):
        audio.fix_length([short], 4, "middle")


def test_a_wav_folder_takes_its_classes_from_train(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for label, kind in enumerate(("bark", "meow")):
            (tmp_path / split / kind).mkdir(parents=True)
            for i in range(count):
                scipy.io.wavfile.write(tmp_path / split / kind / f"{i}.wav", RATE,
                                       (tone(label, 800 + i) * 32767).astype(np.int16))
    dataset = data.load("wav_folder", manual_dir=str(tmp_path))
    assert dataset.info.class_names == ("bark", "meow") and dataset.validation is None
    np.testing.assert_array_equal(dataset.train.y, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(dataset.test.y, [0, 0, 1, 1])
    (tmp_path / "test" / "moo").mkdir()
    with pytest.raises(UsageError, match="class folders that train lacks: moo"):
        data.load("wav_folder", manual_dir=str(tmp_path))


class Records:
    """A TFDS data source of spoken_digit records, as its prepared array_record files give them."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitems__(self, keys):
        return [self.records[k] for k in keys]


def test_tfds_spoken_digit_is_split_by_the_same_rule(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    names = [f"{d}_{s}_{i}" for d in (4, 7) for s in ("theo", "lucas") for i in (0, 4, 5, 31)]
    records = [{"audio": (tone(int(n[0]), 900) * 32767).astype(np.int64), "label": int(n[0]),
                "audio/filename": f"{n}.wav".encode()} for n in names]
    monkeypatch.setattr(tfds_source, "_any_host_reachable", lambda urls: True)  # as if online
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=lambda builder, split, **kw: Records(records)):
        splits = audio.read_spoken_digit(str(tmp_path))
        wide = audio.load_fsdd(data_dir=str(tmp_path), sample_rate=16000)
    assert splits["test"].files == tuple(f"{d}_{s}_{i}.wav" for d in (4, 7) for s in ("lucas", "theo") for i in (0, 4))
    assert len(splits["train"]) == 8 and set(splits["train"].labels) == {4, 7}
    assert splits["test"].speaker_names == ("lucas", "theo")
    np.testing.assert_allclose(splits["test"].waveforms[0], tone(4, 900), atol=1e-4)
    assert wide["test"].sample_rate == 16000 and len(wide["test"].waveforms[0]) == 1800

    monkeypatch.setattr(tfds_source, "_any_host_reachable", lambda urls: False)  # offline: fails at once
    with pytest.raises(UsageError, match=r"spoken_digit: .*unreachable; pass --manual_dir=DIR instead"):
        data.load("fsdd", data_dir=str(tmp_path))


def test_bad_folders_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="is not a folder"):
        data.load("fsdd", manual_dir=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no .wav files"):
        data.load("fsdd", manual_dir=str(tmp_path / "empty"))
    write_fsdd(tmp_path / "only_test", digits=[1], speakers=["ann"], indices=range(5))
    with pytest.raises(UsageError, match="train split is empty"):
        audio.read_fsdd(str(tmp_path / "only_test"))
    folder = tmp_path / "odd"
    write_fsdd(folder, digits=[1], speakers=["ann"])
    (folder / "hello.wav").write_bytes(b"RIFF")
    with pytest.raises(UsageError, match="hello.wav is not named as FSDD's recordings are"):
        audio.read_fsdd(str(folder))
    (folder / "hello.wav").rename(folder / "2_ann_9.wav")
    with pytest.raises(UsageError, match="2_ann_9.wav cannot be read as a WAV file"):
        audio.read_fsdd(str(folder))
    write_fsdd(tmp_path / "fine", digits=[0], speakers=["x"])
    with pytest.raises(UsageError, match="--normalize=standardize scales features"):
        data.load("fsdd", manual_dir=str(tmp_path / "fine"), normalize="standardize")
    (tmp_path / "wavs" / "train").mkdir(parents=True)
    with pytest.raises(UsageError, match="lacks the subfolder test"):
        data.load("wav_folder", manual_dir=str(tmp_path / "wavs"))
    with pytest.raises(UsageError, match="--dataset=wav_folder reads --manual_dir"):
        data.load("wav_folder")


@pytest.mark.parametrize("changes, message", [
    (dict(win_length=300), "--win_length=300 is longer than --n_fft=256"),
    (dict(fmax=5000.0), "0 <= --fmin < --fmax <= half the sample rate"),
    (dict(time_shift=1.0), "--time_shift=1.0 s is not shorter than a clip"),
    (dict(gain_db=-1.0), "--time_shift and --gain_db must not be negative"),
    (dict(hop_length=0), "--hop_length must be positive"),
    (dict(model="rnn"), "--model=rnn is not one of: spectrogram_cnn, waveform_cnn"),
])
def test_bad_settings_are_one_line_errors(changes, message):
    with pytest.raises(UsageError, match=message):
        SpokenDigits(workdir="unused", **changes).validate()


@pytest.mark.skipif(not FSDD.is_dir(), reason=f"genuine FSDD recordings not found: {FSDD}")
def test_genuine_fsdd_official_split():
    splits = audio.read_fsdd(str(FSDD))
    train, test = splits["train"], splits["test"]
    speakers = len(train.speaker_names)
    assert (len(train), len(test)) == (speakers * 10 * 45, speakers * 10 * 5)
    assert np.all(np.bincount(test.labels) == speakers * 5) and np.all(np.bincount(test.speakers) == 50)
    assert all(np.abs(w).max() <= 1.0 and 1000 < len(w) < 20000 for w in train.waveforms + test.waveforms)


# The front end.

def slaney_mel(hz):
    """Slaney's Auditory Toolbox mel scale, written from its definition: 200/3 Hz per mel up to 1 kHz, then
    27 mels per factor of 6.4."""
    return np.array([f / (200 / 3) if f < 1000 else 15 + 27 * np.log(f / 1000) / np.log(6.4) for f in hz])


def reference_log_mel(x, rate, n_fft, win_length, hop_length, n_mels, fmin, fmax):
    """scipy.signal.stft's power through unit-area triangles drawn with np.interp, then log(. + 1e-6)."""
    _, _, z = scipy.signal.stft(x, fs=rate, window="hann", nperseg=win_length, noverlap=win_length - hop_length,
                                nfft=n_fft, boundary="zeros", padded=False)
    power = np.abs(z * scipy.signal.get_window("hann", win_length).sum()) ** 2  # undo scipy's 1/sum(window)
    grid = np.linspace(slaney_mel([fmin])[0], slaney_mel([fmax])[0], n_mels + 2)
    hz_of = lambda mels: np.interp(mels, slaney_mel(np.linspace(0, rate, 20001)), np.linspace(0, rate, 20001))
    edges = hz_of(grid)
    freqs = np.fft.rfftfreq(n_fft, 1 / rate)
    bank = np.stack([np.interp(freqs, edges[i:i + 3], [0, 1, 0]) * 2 / (edges[i + 2] - edges[i])
                     for i in range(n_mels)])
    return np.log(np.einsum("mf,...ft->...tm", bank, power) + 1e-6)


@pytest.mark.parametrize("rate, n_fft, win_length, hop_length, n_mels, fmin, fmax", [
    (8000, 256, 200, 80, 40, 0.0, 4000.0), (16000, 512, 400, 160, 64, 20.0, 7600.0)])
def test_log_mel_matches_scipy_stft_and_an_independent_filterbank(rate, n_fft, win_length, hop_length, n_mels,
                                                                  fmin, fmax):
    x = np.random.default_rng(0).uniform(-1, 1, (2, rate // 2)).astype(np.float32)
    x[1, : rate // 4] = 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate // 4) / rate)
    ours = jax.jit(lambda w: audio_models.log_mel_spectrogram(
        w, sample_rate=rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length, n_mels=n_mels, fmin=fmin,
        fmax=fmax))(x)
    expected = reference_log_mel(x.astype(np.float64), rate, n_fft, win_length, hop_length, n_mels, fmin, fmax)
    assert ours.shape == expected.shape == (2, 1 + x.shape[1] // hop_length, n_mels)
    np.testing.assert_allclose(ours, expected, atol=2e-3)  # the reference's scale is interpolated


def test_log_mel_matches_librosa():
    librosa = pytest.importorskip("librosa", reason="librosa is not installed (pip install librosa)")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 4000)).astype(np.float32)
    np.testing.assert_allclose(audio_models.mel_filterbank(RATE, 256, 40),
                               librosa.filters.mel(sr=RATE, n_fft=256, n_mels=40).T, atol=1e-7)
    ours = audio_models.log_mel_spectrogram(jnp.asarray(x), sample_rate=RATE)
    power = librosa.feature.melspectrogram(y=x.astype(np.float64), sr=RATE, n_fft=256, win_length=200,
                                           hop_length=80, n_mels=40, pad_mode="constant")
    np.testing.assert_allclose(ours, np.log(power + 1e-6).transpose(0, 2, 1), atol=1e-4)


def test_augmentation_shifts_and_scales_each_clip_and_only_in_training():
    clip = np.arange(1.0, 11.0, dtype=np.float32)
    moved = {s: np.concatenate([np.zeros(max(s, 0)), clip[max(-s, 0):10 - max(s, 0)], np.zeros(max(-s, 0))])
             for s in range(-3, 4)}  # the clip moved by s samples, zeros shifted in
    augment = jax.jit(audio_models.augment_waveforms, static_argnums=(2, 3))
    shifted = np.asarray(augment(jnp.tile(clip, (64, 1)), jax.random.PRNGKey(0), 3, 0.0))
    drawn = [[s for s, row in moved.items() if np.array_equal(row, clip_out)] for clip_out in shifted]
    assert all(len(d) == 1 for d in drawn) and {d[0] for d in drawn} == set(moved)
    gains = augment(jnp.tile(clip, (64, 1)), jax.random.PRNGKey(0), 0, 6.0)[:, 0]
    assert 10 ** (-6 / 20) <= gains.min() < gains.max() <= 10 ** (6 / 20) and jnp.unique(gains).size == 64

    layer = audio_models.Augmentation(max_shift=400, gain_db=6.0)
    clips = jnp.asarray(audio.fix_length([tone(d, 1500) for d in range(3)], 2000))
    train = jax.jit(lambda key: layer.apply({}, clips, True, rngs={"dropout": key}))
    np.testing.assert_array_equal(train(jax.random.PRNGKey(5)), train(jax.random.PRNGKey(5)))
    assert not np.allclose(train(jax.random.PRNGKey(5)), train(jax.random.PRNGKey(6)))
    np.testing.assert_array_equal(layer.apply({}, clips, False), clips)  # evaluation: the clips as they are


def test_waveform_cnn_classifies_raw_clips_and_names_its_axes():
    model = audio_models.WaveformCNN(num_outputs=10, features=(8, 8, 16), first_kernel=40)
    variables = jax.eval_shape(model.init, {"params": jax.random.PRNGKey(0)}, jnp.zeros((2, 4000)))
    assert jax.eval_shape(model.apply, variables, jnp.zeros((2, 4000))).shape == (2, 10)
    specs = jax.tree.leaves(nn.get_partition_spec(variables["params"]),
                            is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    assert [tuple(s) for s in specs].count(("conv_width", "conv_in", "conv_out")) == 3
    with pytest.raises(UsageError, match=r"waveform_cnn takes waveforms \[batch, samples\]"):
        model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((2, 28, 28)))


# The experiment, end to end.

def test_spoken_digits_trains_saves_and_scores_waveforms(tmp_path):
    folder = tmp_path / "recordings"
    write_fsdd(folder, digits=range(4), speakers=("ann", "bo"), indices=range(9))
    workdir = tmp_path / "run"
    out = run_module("experiments.spoken_digits", f"--workdir={workdir}", f"--manual_dir={folder}",
                     "--clip_samples=2000", "--n_mels=16", "--conv_features=8,16", "--train_steps=40",
                     "--batch_size=16", "--lr_schedule=constant", "--learning_rate=0.01", "--validation_split=0.25",
                     "--time_shift=0.02", "--gain_db=0", "--dropout=0", "--log_every_steps=20", "--parallel=mesh",
                     "--host_devices=2")
    assert out.returncode == 0, out.stderr
    result = read_result(workdir)
    assert result["experiment"] == "experiments.spoken_digits" and result["steps"] == 40
    assert result["test"]["accuracy"] >= 0.9, result["test"]  # four pitches, 40 test clips

    run = bmjax.restore(str(workdir))
    test = audio.read_fsdd(str(folder))["test"]
    probabilities = audio_models.classify(run, test.waveforms)
    assert probabilities.shape == (40, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(probabilities.argmax(axis=1) == test.labels) == result["test"]["accuracy"]
