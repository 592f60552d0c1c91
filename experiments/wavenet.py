"""WaveNet (van den Oord et al. 2016) on spoken digits: next-sample prediction of 8-bit mu-law audio, conditioned
on the digit and the speaker, then fast generation (Paine et al. 2016) of new clips.

    python -m experiments.wavenet --workdir=runs/wavenet --manual_dir=free-spoken-digit-dataset/recordings \
        --preset=cpu                                                                     # 25 min on 2 cores
    python -m experiments.wavenet --workdir=runs/wavenet --mode=sample --digit=7      # WORKDIR/samples/*.wav
    python -m experiments.wavenet --workdir=runs/wavenet --mode=sample --classifier=runs/spoken_digits

The data are FSDD's recordings (`bmjax.data.audio`; without --manual_dir, TFDS's spoken_digit), its official
split, each clip mu-law coded and cut into examples of --window samples: a clip's first example scores every
sample from the clip's start, each later one scores what follows and reads the receptive field before it as
context, so every sample is scored once, with all the context the network can see. result.json's
`bits_per_sample` is the test negative log-likelihood in bits; `unigram_entropy_bits` is the entropy of the
test samples' mu-law classes (what a model that ignored all context could reach at best).

--mode=sample writes --num_samples clips per digit (--digit, or all ten) as 16-bit WAV files, each with a speaker
(--speaker, or each in turn), and with --classifier=RUN (a spoken-digit classifier's workdir) the share of the
clips it hears as the digit they were conditioned on, in WORKDIR/samples/samples.json.
"""

import dataclasses
import json
import math
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

import bmjax
from bmjax import cli, data, models, tasks
from bmjax.config import Config, field
from bmjax.data import audio
from bmjax.data.sources import VALIDATION_SEED, ArraySource, Dataset, DatasetInfo
from bmjax.errors import UsageError
from bmjax.models import wavenet

DATASET = "fsdd_mu_law"
FSDD_SPEAKERS = "george,jackson,nicolas,theo,yweweler"  # FSDD v1.0.9's, alphabetically
SAMPLES_DIR = "samples"

PRESETS = {
    # About 25 minutes on 2 shared CPU cores (0.7 steps/s): test 4.62 bits per sample against a unigram
    # entropy of 7.22 bits. Its samples are still babble to a spoken-digit classifier (12% of 50 clips).
    "cpu": dict(layers_per_stack=8, residual_channels=24, gate_channels=24, skip_channels=48, window=2048,
                train_steps=1000, learning_rate=2e-3, lr_schedule="cosine", min_learning_rate=1e-4,
                validation_split=0.05, eval_every_steps=250, checkpoint_every_steps=250),
}


@dataclasses.dataclass(frozen=True)
class WaveNetConfig(Config):
    dataset: str = DATASET
    task: str = "language_model"
    model: str = "wavenet"
    stacks: int = field(2, "Stacks of dilated layers.")
    layers_per_stack: int = field(9, "Layers per stack, dilated 1, 2, ..., 2^(layers - 1).")
    kernel_size: int = 2  # the causal convolutions' width, as in the paper
    residual_channels: int = field(32, "Channels of the residual stream.")
    gate_channels: int = field(32, "Channels of each gated unit.")
    skip_channels: int = field(64, "Channels of the skip connections and the output's hidden 1x1 layer.")
    condition_dim: int = field(16, "Width of the digit's and of the speaker's embedding.")
    speakers: str = field(FSDD_SPEAKERS, "The speakers the model is conditioned on, comma-separated (FSDD's "
                                         "names); every clip's speaker must be one of them.")
    window: int = field(3000, "Samples per training example; longer than the receptive field.")
    sample_rate: int = field(8000, "Audio sample rate in Hz (FSDD's is 8000; others are resampled).")
    batch_size: int = 16
    eval_batch_size: int = 64
    learning_rate: float = 1e-3
    clip_grad_norm: Optional[float] = 1.0
    epochs: int = 20
    log_every_steps: int = 50
    mode: str = field("train", "Train, or sample clips from the trained model in --workdir.", ("train", "sample"),
                      trains=False)
    digit: Optional[int] = field(None, "The digit the samples say (default: each of 0-9).", trains=False)
    speaker: Optional[str] = field(None, "The speaker's name (default: the run's speakers in turn).", trains=False)
    num_samples: int = field(2, "Clips sampled per digit.", trains=False)
    sample_seconds: float = field(0.5, "Length of each sampled clip in seconds.", trains=False)
    temperature: float = field(1.0, "Sampling temperature; 0 takes the most likely sample each time.",
                               trains=False)
    classifier: Optional[str] = field(None, "Workdir of a trained spoken-digit classifier that scores the "
                                            "samples (experiments.spoken_digits).", trains=False)

    def validate(self) -> "WaveNetConfig":
        super().validate()
        for name in ("stacks", "layers_per_stack", "residual_channels", "gate_channels", "skip_channels",
                     "condition_dim", "sample_rate", "num_samples"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.kernel_size < 2:
            raise UsageError(f"--kernel_size must be at least 2 for a causal convolution, got {self.kernel_size}")
        if self.window <= self.receptive_field - 1:
            raise UsageError(f"--window={self.window} leaves no sample to score after the {self.receptive_field - 1} "
                             f"samples of context the receptive field needs; use --window={2 * self.receptive_field} "
                             "or fewer --layers_per_stack")
        names = self.speaker_names
        if not all(names) or len(set(names)) != len(names):
            raise UsageError(f"--speakers must name distinct speakers, comma-separated, got {self.speakers!r}")
        if self.digit is not None and not 0 <= self.digit <= 9:
            raise UsageError(f"--digit must be one of 0-9, got {self.digit}")
        if self.temperature < 0 or self.sample_seconds <= 0:
            raise UsageError(f"--temperature must not be negative and --sample_seconds must be positive, got "
                             f"{self.temperature} and {self.sample_seconds}")
        return self

    @property
    def speaker_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.speakers.split(","))

    @property
    def dilations(self) -> tuple[int, ...]:
        return wavenet.dilations(self.stacks, self.layers_per_stack)

    @property
    def receptive_field(self) -> int:
        return wavenet.receptive_field(self.dilations, self.kernel_size)

    def build_task(self, dataset):
        return NextSample(wavenet.CLASSES)


@models.register("wavenet")
def wavenet_model(config: WaveNetConfig, io: models.ModelIO) -> wavenet.WaveNet:
    return wavenet.WaveNet(dilations=config.dilations, num_digits=len(audio.DIGITS),
                           num_speakers=len(config.speaker_names), residual_channels=config.residual_channels,
                           gate_channels=config.gate_channels, skip_channels=config.skip_channels,
                           kernel_size=config.kernel_size, condition_dim=config.condition_dim,
                           num_classes=io.num_outputs, dtype=config.compute_dtype)


class NextSample(tasks.TokenPrediction):
    """Next-sample prediction over the mu-law classes, its loss also in bits per sample, and each split's unigram
    entropy: the entropy of its scored samples' classes, counted in the metric sums."""

    def metric_sums(self, logits, y, example_losses, weights, mask):
        sums = super().metric_sums(logits, y, example_losses, weights, mask)
        scored = (y["weights"] * mask[:, None]).reshape(-1)
        counts = jnp.zeros(wavenet.CLASSES, jnp.float32).at[y["targets"].reshape(-1)].add(scored)
        return {**sums, "class_counts": counts}

    def summarize(self, sums, detailed: bool = False) -> dict:
        summary = super().summarize(sums, detailed)
        return {**summary, "bits_per_sample": summary["loss"] / math.log(2),
                "unigram_entropy_bits": entropy_bits(sums["class_counts"])}


def entropy_bits(counts) -> float:
    """Entropy in bits of the distribution the class `counts` give."""
    p = np.asarray(counts, np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


class ClipWindows(ArraySource):
    """Examples {"x": {"audio", "digit", "speaker"}, "y": {"targets", "weights"}}, one row each; a weight of 0
    marks a position that is context or past the clip's end."""

    def __init__(self, x: dict, y: dict):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y["targets"])

    def __getitem__(self, indices):
        return {"x": jax.tree.map(lambda a: a[indices], self.x), "y": jax.tree.map(lambda a: a[indices], self.y)}

    def rows(self, indices) -> "ClipWindows":
        batch = self[indices]
        return ClipWindows(batch["x"], batch["y"])


def clip_windows(clips: audio.Clips, speaker_ids: np.ndarray, window: int, context: int) -> ClipWindows:
    """Every clip as mu-law inputs and targets cut into examples of `window` samples: the first from the clip's
    start (its input the silence before the first sample), each later one scoring the next window - context samples
    and reading the `context` before them."""
    rows = {name: [] for name in ("audio", "digit", "speaker", "targets", "weights")}
    for waveform, digit, speaker in zip(clips.waveforms, clips.labels, speaker_ids):
        targets = np.asarray(wavenet.mu_law_encode(waveform))
        inputs = np.concatenate([[wavenet.SILENCE], targets[:-1]])
        scored = 0
        while scored < len(targets):
            first = 0 if scored == 0 else scored - context
            piece = slice(first, first + window)
            length = len(targets[piece])
            weights = np.zeros(window, np.float32)
            weights[scored - first:length] = 1.0
            for name, values, fill in (("audio", inputs, wavenet.SILENCE), ("targets", targets, wavenet.SILENCE)):
                rows[name].append(np.pad(values[piece], (0, window - length), constant_values=fill))
            rows["weights"].append(weights)
            rows["digit"].append(digit)
            rows["speaker"].append(speaker)
            scored = first + window
    arrays = {name: np.asarray(values, np.float32 if name == "weights" else np.int32) for name, values in rows.items()}
    return ClipWindows({name: arrays[name] for name in ("audio", "digit", "speaker")},
                       {"targets": arrays["targets"], "weights": arrays["weights"]})


def speaker_ids(clips: audio.Clips, speakers: tuple[str, ...]) -> np.ndarray:
    names = [clips.speaker_names[i] if i >= 0 else None for i in clips.speakers]
    unknown = sorted({str(n) for n in names if n not in speakers})
    if unknown:
        raise UsageError(f"clips of speakers {', '.join(unknown)} are not among --speakers={','.join(speakers)}; add "
                         "them to --speakers")
    return np.array([speakers.index(n) for n in names], np.int32)


def _clip_subset(clips: audio.Clips, rows) -> audio.Clips:
    return dataclasses.replace(clips, waveforms=tuple(clips.waveforms[i] for i in rows), labels=clips.labels[rows],
                               speakers=clips.speakers[rows], files=tuple(clips.files[i] for i in rows))


@data.register(DATASET)
def fsdd_mu_law(spec) -> Dataset:
    """FSDD's official split (from --manual_dir's recordings, else TFDS's spoken_digit) as mu-law next-sample
    examples; --validation_split holds out whole clips of the training split."""
    setting = lambda name: data.registry.setting(spec, name)
    rate, speakers = setting("sample_rate"), setting("speaker_names")
    window, context = setting("window"), setting("receptive_field") - 1
    splits = audio.load_fsdd(spec.manual_dir, spec.data_dir, rate)
    if spec.validation_split is not None:
        train = splits["train"]
        order = np.random.default_rng(VALIDATION_SEED).permutation(len(train))
        held_out = int(round(spec.validation_split * len(train)))
        if not 0 < held_out < len(train):
            raise UsageError(f"--validation_split={spec.validation_split} leaves no clips on one side of the "
                             f"{len(train)} training clips; choose a fraction nearer 0.5")
        splits["train"], splits["validation"] = (_clip_subset(train, np.sort(order[held_out:])),
                                                 _clip_subset(train, np.sort(order[:held_out])))
    sources = {s: clip_windows(c, speaker_ids(c, speakers), window, context) for s, c in splits.items()}
    info = DatasetInfo(name=DATASET, task="language_model", feature_shape=(window,), num_classes=wavenet.CLASSES,
                       class_names=None, vocab_size=wavenet.CLASSES)
    return Dataset(info, sources["train"], sources.get("validation"), sources["test"])


def conditions(config: WaveNetConfig, speakers: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(digits, speaker ids) of the clips --mode=sample draws: --num_samples per digit."""
    digits = list(range(10)) if config.digit is None else [config.digit]
    if config.speaker is not None and config.speaker not in speakers:
        raise UsageError(f"--speaker={config.speaker} is not one of the run's speakers: {', '.join(speakers)}")
    digit_ids = np.repeat(np.array(digits, np.int32), config.num_samples)
    if config.speaker is None:
        speaker_ids = np.arange(len(digit_ids), dtype=np.int32) % len(speakers)
    else:
        speaker_ids = np.full(len(digit_ids), speakers.index(config.speaker), np.int32)
    return digit_ids, speaker_ids


def write_wav(path: str, waveform: np.ndarray, rate: int):
    from scipy.io import wavfile

    wavfile.write(path, rate, np.round(np.clip(waveform, -1.0, 1.0) * 32767).astype(np.int16))


def sample(config: WaveNetConfig, command: str = "") -> dict:
    """Clips from the newest checkpoint of the run in --workdir, written as WAV files (and scored by --classifier);
    returns what samples.json holds. The model is the run's own; only the sampling flags are read from `config`."""
    run = bmjax.restore(config.workdir)
    speakers, rate = run.config.speaker_names, run.config.sample_rate
    digits, speaker_ids = conditions(config, speakers)
    length = max(1, int(round(config.sample_seconds * rate)))
    tokens = wavenet.generate(run.model, run.params, digits, speaker_ids, length, jax.random.PRNGKey(config.seed),
                              temperature=config.temperature or 1.0, greedy=config.temperature == 0)
    waveforms = np.asarray(wavenet.mu_law_decode(tokens))
    folder = os.path.join(run_dir(config), SAMPLES_DIR)
    os.makedirs(folder, exist_ok=True)
    files, counts = [], {}
    for waveform, digit, speaker in zip(waveforms, digits, speaker_ids):
        key = (int(digit), speakers[speaker])
        counts[key] = counts.get(key, 0) + 1
        files.append(f"{digit}_{speakers[speaker]}_{counts[key] - 1}.wav")
        write_wav(os.path.join(folder, files[-1]), waveform, rate)
    record = {"step": run.step, "sample_rate": rate, "seconds": length / rate, "temperature": config.temperature,
              "files": files, "digits": digits.tolist(), "speakers": [speakers[i] for i in speaker_ids]}
    if config.classifier:
        record.update(score(config.classifier, waveforms, digits, rate))
    with open(os.path.join(folder, "samples.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {len(files)} clips of {length / rate:.2f} s (step {run.step}) to {folder}")
    if "recognised_share" in record:
        print(f"the classifier hears the conditioned digit in {record['recognised_share']:.1%} of them")
    return record


def run_dir(config: WaveNetConfig) -> str:
    return os.path.abspath(os.path.expanduser(config.workdir))


def score(classifier: str, waveforms: np.ndarray, digits: np.ndarray, rate: int) -> dict:
    """What a spoken-digit classifier's run hears in `waveforms`: its predictions and the share that are `digits`.
    Clips are resampled to its rate and padded or cropped as its training clips were (`models.audio.classify`)."""
    from bmjax.models.audio import classify

    run = bmjax.restore(classifier)
    if run.info is None or run.info.task != "classification" or run.info.num_classes != len(audio.DIGITS):
        raise UsageError(f"--classifier={classifier} is not a run of a ten-digit classifier; pass the workdir of "
                         "experiments.spoken_digits")
    own_rate = run.config.sample_rate
    clips = [audio.resample(w, rate, own_rate) if own_rate != rate else w for w in waveforms]
    predictions = np.argmax(classify(run, clips), axis=-1)
    right = predictions == digits
    per_digit = {str(d): float(right[digits == d].mean()) for d in np.unique(digits)}
    return {"classifier": os.path.abspath(classifier), "predictions": predictions.tolist(),
            "recognised_share": float(right.mean()), "recognised_share_per_digit": per_digit}


def main(config: WaveNetConfig, command: str = "experiments.wavenet"):
    return sample(config, command) if config.mode == "sample" else bmjax.run(config, command)


if __name__ == "__main__":
    cli.main(WaveNetConfig, presets=PRESETS, entry=main)
