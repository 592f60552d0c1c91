"""Audio classifiers over waveforms [batch, samples] in [-1, 1]: a log-mel front end computed in JAX inside the
compiled step, a CNN over the log-mel spectrogram, and a 1-D CNN over the raw waveform.

    features = log_mel_spectrogram(waveforms, sample_rate=8000)   # [batch, frames, n_mels]
    model = SpectrogramCNN(num_outputs=10, sample_rate=8000)       # --model=spectrogram_cnn
    model = WaveformCNN(num_outputs=10)                            # --model=waveform_cnn (Dai et al.'s M5)

The spectrogram is scipy.signal.stft's (frames of `win_length` samples every `hop_length`, centred on their
hop by `win_length // 2` zeros of padding, a periodic Hann window, an FFT of `n_fft` points), its power put
through a mel filterbank with librosa's defaults (Slaney's mel scale, each triangle normalised to unit area),
then log(power + 1e-6). In training, both models can shift each clip in time and change its gain first
(`time_shift`, `gain_db`), drawing from the step's dropout key: deterministic per step, so a resumed run
augments as the whole run did.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bmjax.errors import UsageError
from bmjax.models.convnet import ConvFactory, NormFactory, max_pool
from bmjax.models.registry import register
from bmjax.models.transformer import partitioned

LOG_OFFSET = 1e-6  # added to the mel power before the log: silence (zero padding) reads as log(1e-6)
CONV1D_AXES = ("conv_width", "conv_in", "conv_out")


def hz_to_mel(hz):
    """Slaney's mel scale (librosa's default): linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, np.float64)
    linear = hz * 3.0 / 200.0
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def mel_to_hz(mel):
    mel = np.asarray(mel, np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * 200.0 / 3.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: Optional[float] = None) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] float32: triangles with edges equally spaced in mels from fmin to fmax (default
    sample_rate / 2), each scaled to unit area (2 / its width in Hz), as librosa.filters.mel's defaults."""
    fmax = sample_rate / 2 if fmax is None else fmax
    frequencies = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (frequencies - lower) / (center - lower)
    falling = (upper - frequencies) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    return weights.T.astype(np.float32)


def hann_window(length: int) -> np.ndarray:
    """The periodic Hann window (scipy.signal.get_window("hann", length)'s), for spectral analysis."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)).astype(np.float32)


def frames(waveforms, win_length: int, hop_length: int):
    """[batch, frames, win_length]: windows every `hop_length` samples, the waveform padded by win_length // 2
    zeros at each end so that frame t is centred on sample t * hop_length."""
    pad = win_length // 2
    padded = jnp.pad(waveforms, ((0, 0), (pad, pad)))
    count = 1 + (padded.shape[1] - win_length) // hop_length
    index = hop_length * np.arange(count)[:, None] + np.arange(win_length)[None, :]
    return padded[:, index]


def log_mel_spectrogram(waveforms, *, sample_rate: int, n_fft: int = 256, win_length: int = 200,
                        hop_length: int = 80, n_mels: int = 40, fmin: float = 0.0, fmax: Optional[float] = None):
    """[batch, frames, n_mels] float32: log(mel power + 1e-6) of waveforms [batch, samples] (jittable)."""
    if win_length > n_fft:
        raise UsageError(f"--win_length={win_length} is longer than --n_fft={n_fft}; use an n_fft of at least the "
                         "window's length")
    if waveforms.ndim != 2:
        raise UsageError(f"a log-mel spectrogram takes waveforms [batch, samples], got an input of shape "
                         f"{tuple(waveforms.shape)}; use an audio dataset (--dataset=fsdd or wav_folder)")
    windowed = frames(waveforms.astype(jnp.float32), win_length, hop_length) * hann_window(win_length)
    spectrum = jnp.fft.rfft(windowed, n=n_fft, axis=-1)
    power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
    mel = power @ mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    return jnp.log(mel + LOG_OFFSET)


def augment_waveforms(waveforms, key, max_shift: int, gain_db: float):
    """Each clip moved by a whole number of samples in [-max_shift, max_shift] (zeros shifted in) and scaled
    by a gain drawn uniformly in [-gain_db, gain_db] decibels."""
    batch, length = waveforms.shape
    shift_key, gain_key = jax.random.split(key)
    if max_shift:
        shifts = jax.random.randint(shift_key, (batch, 1), -max_shift, max_shift + 1)
        source = jnp.arange(length)[None, :] - shifts
        inside = (source >= 0) & (source < length)
        waveforms = jnp.where(inside, jnp.take_along_axis(waveforms, jnp.clip(source, 0, length - 1), axis=1), 0.0)
    if gain_db:
        gains = jax.random.uniform(gain_key, (batch, 1), minval=-gain_db, maxval=gain_db)
        waveforms = waveforms * 10.0 ** (gains / 20.0)
    return waveforms


class Augmentation(nn.Module):
    """Random time shift and gain in training (from the "dropout" key), nothing in evaluation."""

    max_shift: int = 0  # samples
    gain_db: float = 0.0

    @nn.compact
    def __call__(self, waveforms, train: bool):
        if not train or not (self.max_shift or self.gain_db):
            return waveforms
        return augment_waveforms(waveforms, self.make_rng("dropout"), self.max_shift, self.gain_db)


def _waveforms(x, model: str):
    if x.ndim != 2:
        raise UsageError(f"{model} takes waveforms [batch, samples], got an input of shape {tuple(x.shape)}; use "
                         "an audio dataset (--dataset=fsdd or wav_folder)")
    return x.astype(jnp.float32)


class SpectrogramCNN(nn.Module):
    """Log-mel front end, BatchNorm of each mel band, then per entry of `features` a 3x3 convolution,
    BatchNorm, ReLU and 2x2 max-pool; global average pooling, dropout and a dense classifier."""

    num_outputs: int
    sample_rate: int = 8000
    n_fft: int = 256
    win_length: int = 200
    hop_length: int = 80
    n_mels: int = 40
    fmin: float = 0.0
    fmax: Optional[float] = None
    features: Sequence[int] = (16, 32, 64, 128)
    dropout: float = 0.0
    max_shift: int = 0
    gain_db: float = 0.0
    bn_momentum: float = 0.9
    axis_name: Optional[str] = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = Augmentation(self.max_shift, self.gain_db)(_waveforms(x, "spectrogram_cnn"), train)
        x = log_mel_spectrogram(x, sample_rate=self.sample_rate, n_fft=self.n_fft, win_length=self.win_length,
                                hop_length=self.hop_length, n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax)
        conv = ConvFactory(self.dtype)
        norm = NormFactory(train, momentum=self.bn_momentum, axis_name=self.axis_name, dtype=self.dtype)
        x = norm(name="input_norm")(x)[..., None]  # [batch, frames, mels, 1], each band's scale learnt
        for i, width in enumerate(self.features):
            if min(x.shape[1:3]) < 2:
                raise UsageError(f"the spectrogram of {self.n_mels} mel bands leaves a {x.shape[1]}x{x.shape[2]} map "
                                 f"before convolution {i + 1}, too small to pool; use fewer --conv_features, more "
                                 "--n_mels or longer clips")
            x = nn.relu(norm(name=f"norm_{i}")(conv(width, 3, name=f"conv_{i}")(x)))
            x = max_pool(x, 2)
        x = nn.Dropout(self.dropout, deterministic=not train)(x.mean(axis=(1, 2)))
        return conv.dense(self.num_outputs, name="head")(x).astype(jnp.float32)


class WaveformCNN(nn.Module):
    """Dai et al. (2017)'s M5 over the raw waveform: a wide strided first convolution, then 3-tap convolutions,
    each with BatchNorm, ReLU and a max-pool of 4; global average pooling, dropout and a dense classifier."""

    num_outputs: int
    features: Sequence[int] = (128, 128, 256, 512)
    first_kernel: int = 80
    first_stride: int = 4
    dropout: float = 0.0
    max_shift: int = 0
    gain_db: float = 0.0
    bn_momentum: float = 0.9
    axis_name: Optional[str] = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = Augmentation(self.max_shift, self.gain_db)(_waveforms(x, "waveform_cnn"), train)[..., None]
        norm = NormFactory(train, momentum=self.bn_momentum, axis_name=self.axis_name, dtype=self.dtype)
        for i, width in enumerate(self.features):
            kernel, stride = (self.first_kernel, self.first_stride) if i == 0 else (3, 1)
            if x.shape[1] < max(kernel, 4):
                raise UsageError(f"clips of {x.shape[1]} samples at layer {i + 1} of waveform_cnn are too short for "
                                 "its convolution and pooling; use longer --clip_samples or fewer --wave_features")
            x = nn.Conv(width, (kernel,), (stride,), padding="SAME", use_bias=False, dtype=self.dtype,
                        name=f"conv_{i}", kernel_init=partitioned(nn.initializers.he_normal(), CONV1D_AXES))(x)
            x = nn.relu(norm(name=f"norm_{i}")(x))
            x = max_pool_1d(x, 4)
        x = nn.Dropout(self.dropout, deterministic=not train)(x.mean(axis=1))
        return ConvFactory(self.dtype).dense(self.num_outputs, name="head")(x).astype(jnp.float32)


def max_pool_1d(x, window: int):
    """[batch, length, channels] -> [batch, length // window, channels] (a last partial window dropped), as a
    reshape and max: fast on XLA:CPU, backward included."""
    batch, length, channels = x.shape
    keep = length // window
    return x[:, :keep * window].reshape(batch, keep, window, channels).max(axis=2)


def _shift_samples(config) -> int:
    return int(round(config.time_shift * config.sample_rate))


@register("spectrogram_cnn")
def spectrogram_cnn(config, io) -> SpectrogramCNN:
    return SpectrogramCNN(num_outputs=io.num_outputs, sample_rate=config.sample_rate, n_fft=config.n_fft,
                          win_length=config.win_length, hop_length=config.hop_length, n_mels=config.n_mels,
                          fmin=config.fmin, fmax=config.fmax, features=config.conv_features, dropout=config.dropout,
                          max_shift=_shift_samples(config), gain_db=config.gain_db, bn_momentum=config.bn_momentum,
                          axis_name=io.axis_name, dtype=config.compute_dtype)


@register("waveform_cnn")
def waveform_cnn(config, io) -> WaveformCNN:
    return WaveformCNN(num_outputs=io.num_outputs, features=config.wave_features, first_kernel=config.wave_kernel,
                       first_stride=config.wave_stride, dropout=config.dropout, max_shift=_shift_samples(config),
                       gain_db=config.gain_db, bn_momentum=config.bn_momentum, axis_name=io.axis_name,
                       dtype=config.compute_dtype)


def classify(run, waveforms: Sequence[np.ndarray], batch_size: int = 500) -> np.ndarray:
    """[clips, classes] class probabilities that a restored audio classifier (`bmjax.restore(workdir)`) gives
    waveforms of any length at the run's sample rate, each padded or cropped as the run's clips were."""
    from bmjax.data.audio import fix_length

    x = fix_length(waveforms, run.config.clip_samples, run.config.clip_align)
    apply = jax.jit(lambda variables, batch: jax.nn.softmax(run.model.apply(variables, batch, train=False), axis=-1))
    return np.concatenate([np.asarray(apply(run.variables, x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
                          or [np.zeros((0, run.io.num_outputs), np.float32)])
