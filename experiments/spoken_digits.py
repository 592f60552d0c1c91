"""Spoken-digit classification on the Free Spoken Digit Dataset's official split, from the waveform up.

    python -m experiments.spoken_digits --workdir=runs/digits_audio --manual_dir=FSDD/recordings
    python -m experiments.spoken_digits --workdir=runs/m5 --manual_dir=FSDD/recordings --model=waveform_cnn
    python -m experiments.spoken_digits --workdir=runs/seeds --manual_dir=FSDD/recordings --num_seeds=3

`--manual_dir` is a folder of FSDD's `{digit}_{speaker}_{index}.wav` recordings (8 kHz; the repository's
`recordings/` folder); without it the run reads TFDS's `spoken_digit`, which needs the network once. Clips
are zero-padded or cropped to `--clip_samples`. The default model computes a log-mel spectrogram inside the
compiled step and classifies it with a small CNN; `--model=waveform_cnn` is a 1-D CNN over the raw waveform
(Dai et al.'s M5). In training each clip is shifted by up to `--time_shift` seconds and its gain changed by up
to `--gain_db`.

A trained run scores waveforms of any length:

    run = bmjax.restore("runs/digits_audio")
    probabilities = bmjax.models.audio.classify(run, waveforms)    # [clips, 10]
"""

import dataclasses
from typing import Optional

from bmjax import cli
from bmjax.config import Config, field
from bmjax.data.audio import ALIGNMENTS
from bmjax.errors import UsageError

MODELS = ("spectrogram_cnn", "waveform_cnn")


@dataclasses.dataclass(frozen=True)
class SpokenDigits(Config):
    dataset: str = field("fsdd", "fsdd (FSDD's official split: --manual_dir's WAV files, else TFDS's "
                                 "spoken_digit) or wav_folder (--manual_dir/{train,test}/CLASS/*.wav).",
                         ("fsdd", "wav_folder"))
    model: str = field("spectrogram_cnn", "A CNN over the log-mel spectrogram, or a 1-D CNN over the waveform.",
                       MODELS)
    sample_rate: int = field(8000, "Sample rate in Hz the clips are read at (resampled where a file differs).")
    clip_samples: int = field(8000, "Samples per clip: longer clips are cropped, shorter ones padded with zeros.")
    clip_align: str = field("center", "Which part of a long clip is kept, and where a short one's padding goes: "
                                      "center, or start (padding at the end).", ALIGNMENTS)
    n_fft: int = field(256, "FFT points of each spectrogram frame.")
    win_length: int = field(200, "Samples per spectrogram frame (25 ms at 8 kHz), Hann-windowed.")
    hop_length: int = field(80, "Samples between spectrogram frames (10 ms at 8 kHz).")
    n_mels: int = field(40, "Mel bands of the spectrogram.")
    fmin: float = field(0.0, "Lowest frequency of the mel filterbank, in Hz.")
    fmax: Optional[float] = field(None, "Highest frequency of the mel filterbank, in Hz (default: half the sample "
                                        "rate).")
    conv_features: tuple[int, ...] = field((16, 32, 64, 128), "spectrogram_cnn: channels of each 3x3 convolution "
                                                             "(each followed by a 2x2 max-pool).")
    wave_features: tuple[int, ...] = field((64, 64, 128, 128), "waveform_cnn: channels of each convolution "
                                                                 "(each followed by a max-pool of 4).")
    wave_kernel: int = field(80, "waveform_cnn: taps of the first convolution (10 ms at 8 kHz).")
    wave_stride: int = field(4, "waveform_cnn: stride of the first convolution.")
    time_shift: float = field(0.1, "Largest random shift of a training clip in time, in seconds (0: none).")
    gain_db: float = field(6.0, "Largest random gain of a training clip, in decibels either way (0: none).")
    bn_momentum: float = field(0.9, "Momentum of BatchNorm's running averages.")
    dropout: float = field(0.2, "Dropout before the classifier.")
    validation_split: Optional[float] = 0.1
    batch_size: int = 64
    epochs: int = 30
    optimizer: str = "adamw"
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "warmup_cosine"
    warmup_steps: int = 100
    eval_batch_size: int = 250
    steps_per_call: int = 1  # XLA:CPU runs convolutions inside loops slowly (jax#12868); 0 on TPU and GPU

    def validate(self) -> "SpokenDigits":
        super().validate()
        for name in ("sample_rate", "clip_samples", "n_fft", "win_length", "hop_length", "n_mels", "wave_kernel",
                     "wave_stride"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.win_length > self.n_fft:
            raise UsageError(f"--win_length={self.win_length} is longer than --n_fft={self.n_fft}; use an n_fft of "
                             "at least the window's length")
        top = self.sample_rate / 2 if self.fmax is None else self.fmax
        if not 0 <= self.fmin < top <= self.sample_rate / 2:
            raise UsageError(f"the mel filterbank needs 0 <= --fmin < --fmax <= half the sample rate "
                             f"({self.sample_rate / 2:g} Hz), got fmin={self.fmin:g} and fmax={top:g}")
        if self.time_shift < 0 or self.gain_db < 0:
            raise UsageError(f"--time_shift and --gain_db must not be negative, got {self.time_shift} and "
                             f"{self.gain_db}; 0 turns either off")
        if self.time_shift * self.sample_rate >= self.clip_samples:
            raise UsageError(f"--time_shift={self.time_shift} s is not shorter than a clip of --clip_samples="
                             f"{self.clip_samples} at {self.sample_rate} Hz; shift by less than the clip")
        if not 0 < self.bn_momentum < 1:
            raise UsageError(f"--bn_momentum must lie in (0, 1), got {self.bn_momentum}")
        if any(w <= 0 for w in self.wave_features) or not self.wave_features:
            raise UsageError("--wave_features must be a list of positive integers, e.g. 64,64,128,128")
        return self


if __name__ == "__main__":
    cli.main(SpokenDigits)
