"""Audio datasets: WAV files and the Free Spoken Digit Dataset (FSDD), as float32 waveforms in [-1, 1].

    splits = audio.read_fsdd("free-spoken-digit-dataset/recordings")   # {"train": Clips, "test": Clips}
    splits = audio.load_fsdd(manual_dir=None)                           # the same from TFDS's spoken_digit
    clips = splits["test"]      # .waveforms (each its own length), .labels, .speakers, .speaker_names, .files
    x = audio.fix_length(clips.waveforms, 8000)                       # [n, 8000]: zero-padded or cropped

Registered datasets (the run's `--clip_samples`, `--clip_align` and `--sample_rate` where its experiment has
them, else 8000 samples, centred, 8 kHz):

- `fsdd`: FSDD's official split (for each speaker and digit, recordings 0-4 are the test split, 5-49
  training), read from `--manual_dir`, a folder of its `{digit}_{speaker}_{index}.wav` files; without
  `--manual_dir`, from TFDS's `spoken_digit` (the same recordings in one split, divided by the same rule).
- `wav_folder`: `--manual_dir` holding `train/CLASS/*.wav` and `test/CLASS/*.wav` (and `validation/CLASS/`
  where there is one); the classes are train's subfolders.

Files at another sample rate are resampled (scipy's polyphase filter), several channels averaged to one.
"""

import dataclasses
import os
import re
from math import gcd
from typing import Optional, Sequence

import numpy as np

from bmjax.data import registry
from bmjax.data.sources import ArraySource, Dataset, DatasetInfo
from bmjax.errors import UsageError

FSDD_SAMPLE_RATE = 8000
FSDD_TEST_INDICES = 5  # recordings 0-4 of each speaker and digit are FSDD's test split
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")
DIGITS = tuple(str(d) for d in range(10))
ALIGNMENTS = ("center", "start")
# What a dataset reads where the run's experiment has no such setting.
DEFAULT_CLIP_SAMPLES = 8000
DEFAULT_CLIP_ALIGN = "center"
DEFAULT_SAMPLE_RATE = FSDD_SAMPLE_RATE
SPOKEN_DIGIT = "spoken_digit"  # TFDS's name for FSDD


@dataclasses.dataclass(frozen=True)
class Clips:
    """Recordings of one split, in file-name order."""

    waveforms: tuple  # float32 arrays in [-1, 1], one per clip, each its own length
    labels: np.ndarray  # int32 class ids (FSDD: the digit spoken)
    speakers: np.ndarray  # int32 indices into speaker_names (-1 where a clip names none)
    speaker_names: tuple[str, ...]
    files: tuple[str, ...]  # base names
    sample_rate: int

    def __len__(self) -> int:
        return len(self.labels)

    def fixed(self, length: int, align: str = DEFAULT_CLIP_ALIGN) -> np.ndarray:
        """[clips, length]: every waveform padded with zeros or cropped to `length` samples (`fix_length`)."""
        return fix_length(self.waveforms, length, align)


def read_wav(path: str, sample_rate: Optional[int] = None) -> tuple[np.ndarray, int]:
    """(waveform, rate): a WAV file as one float32 channel in [-1, 1] (channels averaged), resampled to
    `sample_rate` where given and different."""
    from scipy.io import wavfile

    try:
        rate, samples = wavfile.read(path)
    except Exception as e:  # scipy raises many types: not RIFF, a truncated chunk, an unknown format
        raise UsageError(f"{path} cannot be read as a WAV file ({e}); replace or remove it") from None
    waveform = to_unit_range(samples)
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=1)
    if sample_rate is not None and rate != sample_rate:
        waveform, rate = resample(waveform, rate, sample_rate), sample_rate
    return waveform.astype(np.float32), int(rate)


def to_unit_range(samples: np.ndarray) -> np.ndarray:
    """PCM samples as float32 in [-1, 1]: signed integers divided by 2^(bits-1), unsigned 8-bit centred on 128,
    floats as they are."""
    if samples.dtype == np.uint8:
        return (samples.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(samples.dtype, np.signedinteger):
        return (samples.astype(np.float64) / float(2 ** (8 * samples.dtype.itemsize - 1))).astype(np.float32)
    if np.issubdtype(samples.dtype, np.floating):
        return samples.astype(np.float32)
    raise UsageError(f"WAV samples of type {samples.dtype} are not PCM audio; use 8/16/24/32-bit PCM or float WAVs")


def resample(waveform: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """`waveform` at `rate` Hz resampled to `new_rate` Hz by scipy's polyphase filter."""
    from scipy.signal import resample_poly

    divisor = gcd(int(rate), int(new_rate))
    return resample_poly(waveform, new_rate // divisor, rate // divisor).astype(np.float32)


def fix_length(waveforms: Sequence[np.ndarray], length: int, align: str = DEFAULT_CLIP_ALIGN) -> np.ndarray:
    """[clips, length] float32: each waveform cropped or padded with zeros to `length` samples. `align="center"`
    keeps the middle of a long clip and pads a short one equally on both sides (the odd sample at the end);
    `"start"` keeps the beginning and pads at the end."""
    if align not in ALIGNMENTS:
        raise UsageError(f"--clip_align={align} is not one of: {', '.join(ALIGNMENTS)}")
    if length <= 0:
        raise UsageError(f"--clip_samples must be positive, got {length}")
    out = np.zeros((len(waveforms), length), np.float32)
    for row, wave in enumerate(waveforms):
        surplus = len(wave) - length
        offset = abs(surplus) // 2 if align == "center" else 0
        if surplus >= 0:
            out[row] = wave[offset:offset + length]
        else:
            out[row, offset:offset + len(wave)] = wave
    return out


def fsdd_name(file_name: str) -> tuple[int, str, int]:
    """(digit, speaker, index) of an FSDD file name `{digit}_{speaker}_{index}.wav`."""
    match = FSDD_NAME.match(os.path.basename(file_name))
    if match is None:
        raise UsageError(f"{file_name} is not named as FSDD's recordings are, {{digit}}_{{speaker}}_{{index}}.wav "
                         "(e.g. 7_jackson_32.wav); pass a folder of FSDD's recordings")
    digit, speaker, index = match.groups()
    return int(digit), speaker, int(index)


def fsdd_split(file_name: str) -> str:
    """"test" for FSDD's recordings 0-4 of each speaker and digit, else "train" (the dataset's official split)."""
    return "test" if fsdd_name(file_name)[2] < FSDD_TEST_INDICES else "train"


def read_fsdd(folder: str, sample_rate: int = FSDD_SAMPLE_RATE) -> dict[str, Clips]:
    """{"train", "test"}: FSDD's recordings in `folder` (or in its `recordings/` subfolder, as in the dataset's
    repository), split officially, at `sample_rate` (FSDD's own is 8 kHz). Labels are the digits; speaker ids
    index the speakers' names in alphabetical order."""
    folder = _folder(folder, "FSDD's recordings ({digit}_{speaker}_{index}.wav)")
    if not _wav_files(folder) and os.path.isdir(os.path.join(folder, "recordings")):
        folder = os.path.join(folder, "recordings")
    files = _wav_files(folder)
    if not files:
        raise UsageError(f"--manual_dir={folder} holds no .wav files; pass the folder of FSDD's recordings "
                         "({digit}_{speaker}_{index}.wav), e.g. free-spoken-digit-dataset/recordings")
    names = {f: fsdd_name(f) for f in files}  # checks every name before reading any file
    waveforms = {f: read_wav(os.path.join(folder, f), sample_rate)[0] for f in files}
    return _fsdd_splits(waveforms, names, sample_rate)


def read_spoken_digit(data_dir: Optional[str] = None) -> dict[str, Clips]:
    """{"train", "test"}: TFDS's `spoken_digit` (FSDD at 8 kHz in one split), divided by FSDD's official rule on
    each record's file name. Needs the prepared dataset, or the network to prepare it."""
    from bmjax.data import tfds_source

    try:
        builder = tfds_source.prepare(SPOKEN_DIGIT, data_dir=data_dir)
    except UsageError as e:  # not prepared, and not preparable here (offline, say): the WAV folder is the way on
        reason = str(e).split(";")[0]
        raise UsageError(f"--dataset=fsdd without --manual_dir reads TFDS's {SPOKEN_DIGIT}: {reason}; pass "
                         "--manual_dir=DIR instead, a folder of FSDD's recordings ({digit}_{speaker}_{index}.wav)"
                         ) from None
    source = builder.as_data_source(split="train")
    records = tfds_source.read_records(source, np.arange(len(source)), builder.data_dir)
    waveforms, names = {}, {}
    for record in records:
        name = record["audio/filename"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        names[name] = fsdd_name(name)
        # TFDS keeps the 16-bit samples as integers in a wider type.
        waveforms[name] = (np.asarray(record["audio"], np.float64) / 32768.0).astype(np.float32)
    return _fsdd_splits(waveforms, names, FSDD_SAMPLE_RATE)


def _fsdd_splits(waveforms: dict, names: dict, sample_rate: int) -> dict[str, Clips]:
    speaker_names = tuple(sorted({speaker for _, speaker, _ in names.values()}))
    splits = {}
    for split in ("train", "test"):
        files = sorted((f for f in waveforms if fsdd_split(f) == split), key=_natural)
        if not files:
            raise UsageError(f"FSDD's {split} split is empty: no recording has an index "
                             f"{'below' if split == 'test' else 'of at least'} {FSDD_TEST_INDICES}; pass the whole "
                             "set of recordings")
        splits[split] = Clips(waveforms=tuple(waveforms[f] for f in files),
                              labels=np.array([names[f][0] for f in files], np.int32),
                              speakers=np.array([speaker_names.index(names[f][1]) for f in files], np.int32),
                              speaker_names=speaker_names, files=tuple(files), sample_rate=sample_rate)
    return splits


def read_wav_folder(folder: str, sample_rate: int) -> tuple[tuple[str, ...], dict[str, Clips]]:
    """(class names, {split: Clips}) of `folder`/SPLIT/CLASS/*.wav, SPLIT in train, test and (optionally)
    validation; the classes are train's subfolders in alphabetical order."""
    folder = _folder(folder, "train/CLASS/*.wav and test/CLASS/*.wav")
    missing = [s for s in ("train", "test") if not os.path.isdir(os.path.join(folder, s))]
    if missing:
        raise UsageError(f"--manual_dir={folder} lacks the subfolder {' and '.join(missing)}; a WAV folder holds "
                         "train/CLASS/*.wav and test/CLASS/*.wav")
    classes = tuple(sorted(c for c in os.listdir(os.path.join(folder, "train"))
                           if os.path.isdir(os.path.join(folder, "train", c))))
    if len(classes) < 2:
        raise UsageError(f"{folder}/train holds {len(classes)} class folders; a classifier needs at least two "
                         "(train/CLASS/*.wav)")
    splits = {}
    for split in ("train", "validation", "test"):
        root = os.path.join(folder, split)
        if not os.path.isdir(root):
            continue
        unknown = sorted(set(c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c))) - set(classes))
        if unknown:
            raise UsageError(f"{root} has class folders that train lacks: {', '.join(unknown)}; give every class "
                             "training examples")
        files = [(c, f) for c in classes if os.path.isdir(os.path.join(root, c))
                 for f in _wav_files(os.path.join(root, c))]
        if not files:
            raise UsageError(f"{root} holds no .wav files in its class folders; put them in {root}/CLASS/")
        splits[split] = Clips(waveforms=tuple(read_wav(os.path.join(root, c, f), sample_rate)[0] for c, f in files),
                              labels=np.array([classes.index(c) for c, _ in files], np.int32),
                              speakers=np.full(len(files), -1, np.int32), speaker_names=(),
                              files=tuple(f for _, f in files), sample_rate=sample_rate)
    return classes, splits


def _folder(folder: Optional[str], holding: str) -> str:
    if not folder:
        raise UsageError(f"pass --manual_dir=DIR, a folder holding {holding}")
    path = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(path):
        raise UsageError(f"--manual_dir={folder} is not a folder; pass a folder holding {holding}")
    return path


def _wav_files(folder: str) -> list[str]:
    return sorted((f for f in os.listdir(folder) if f.lower().endswith(".wav")), key=_natural)


def _natural(name: str) -> list:
    """Sort key with numbers in order: 0_a_2.wav before 0_a_10.wav."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _setting(spec, name: str, default):
    """The run's `name` setting where its experiment has one, else `default`."""
    return getattr(spec.config, name, default) if spec.config is not None else default


def clips_dataset(spec, splits: dict[str, Clips], class_names: Sequence[str]) -> Dataset:
    """A classification Dataset of fixed-length waveforms ({"x": [n, clip_samples] float32, "y": class}); a
    validation split is the folder's own or `spec.validation_split` of the training clips."""
    from bmjax.data.datasets import carve_validation

    length = _setting(spec, "clip_samples", DEFAULT_CLIP_SAMPLES)
    align = _setting(spec, "clip_align", DEFAULT_CLIP_ALIGN)
    if spec.normalize != "none":
        raise UsageError(f"--normalize={spec.normalize} scales features, but {spec.name}'s are waveforms in [-1, 1]; "
                         "leave --normalize=none")
    sources = {split: ArraySource(clips.fixed(length, align), clips.labels) for split, clips in splits.items()}
    train, validation = sources["train"], sources.get("validation")
    if spec.validation_split is not None:
        if validation is not None:
            raise UsageError(f"{spec.name} has a validation folder of its own; leave --validation_split unset")
        train, validation = carve_validation(train, spec.validation_split)
    info = DatasetInfo(name=spec.name, task="classification", feature_shape=(length,), num_classes=len(class_names),
                       class_names=tuple(class_names))
    return Dataset(info, train, validation, sources["test"])


def load_fsdd(manual_dir: Optional[str] = None, data_dir: Optional[str] = None,
              sample_rate: int = FSDD_SAMPLE_RATE) -> dict[str, Clips]:
    """{"train", "test"}: FSDD's official split at `sample_rate`, from the WAV files in `manual_dir` where given
    (`read_fsdd`), else from TFDS's spoken_digit in `data_dir` (`read_spoken_digit`)."""
    if manual_dir:
        return read_fsdd(manual_dir, sample_rate)
    splits = read_spoken_digit(data_dir)
    if sample_rate == FSDD_SAMPLE_RATE:
        return splits
    return {split: dataclasses.replace(clips, waveforms=tuple(resample(w, clips.sample_rate, sample_rate)
                                                              for w in clips.waveforms), sample_rate=sample_rate)
            for split, clips in splits.items()}


@registry.register("fsdd")
def fsdd(spec) -> Dataset:
    """FSDD's official split, from --manual_dir's WAV files or else TFDS's spoken_digit."""
    splits = load_fsdd(spec.manual_dir, spec.data_dir, _setting(spec, "sample_rate", DEFAULT_SAMPLE_RATE))
    return clips_dataset(spec, splits, DIGITS)


@registry.register("wav_folder")
def wav_folder(spec) -> Dataset:
    """--manual_dir's train/CLASS/*.wav and test/CLASS/*.wav (and validation/CLASS/*.wav)."""
    if not spec.manual_dir:
        raise UsageError("--dataset=wav_folder reads --manual_dir=DIR, a folder holding train/CLASS/*.wav and "
                         "test/CLASS/*.wav; pass it")
    classes, splits = read_wav_folder(spec.manual_dir, _setting(spec, "sample_rate", DEFAULT_SAMPLE_RATE))
    return clips_dataset(spec, splits, classes)
