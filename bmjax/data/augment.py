"""Image augmentation on the device, inside the compiled train step.

    augment = Augment(("crop", "flip", "mixup"), num_classes=10, label_smoothing=0.1)
    batch = augment(batch, key, first_row)   # {"x": [B, H, W(, C)] floats, "y": class ids}

Each image draws its randomness from the step's key folded with the image's row in the global batch, so the
same step augments the same images alike under `single`, `pmap` and `mesh`, and a resumed run exactly as the
uninterrupted one. Mixup and cutmix mix each image with the one in the mirrored row of the batch (of each
device's share under `pmap`) with one mixing weight per batch; when both are asked for, each batch takes
one of them at random. Labels come out as (smoothed, mixed) class distributions.
"""

import dataclasses
from typing import Sequence

import dm_pix
import jax
import jax.numpy as jnp
import optax

from bmjax.errors import UsageError

AUGMENTATIONS = ("crop", "flip", "resized_crop", "mixup", "cutmix")
RESIZED_CROP_SCALE = (0.08, 1.0)  # the share of the image's area a random resized crop keeps (Inception's)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)


def parse(flag: str) -> tuple[str, ...]:
    """--augment=crop,flip -> ("crop", "flip"); "none" or "" -> ()."""
    names = tuple(n.strip() for n in flag.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise UsageError(f"--augment={flag}: unknown {', '.join(unknown)}; choose none or a comma-separated list of "
                         f"{', '.join(AUGMENTATIONS)}")
    return names


@dataclasses.dataclass(frozen=True)
class Augment:
    names: Sequence[str]
    num_classes: int
    crop_padding: int = 4
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    label_smoothing: float = 0.0

    def __call__(self, batch: dict, key, first_row=0) -> dict:
        x, y = batch["x"], batch["y"]
        grey = x.ndim == 3
        images = x[..., None] if grey else x
        rows = first_row + jnp.arange(images.shape[0])
        for stream, (name, transform) in enumerate(PER_IMAGE):  # in this order, whatever the flag's
            if name in self.names:
                keys = jax.vmap(lambda row: jax.random.fold_in(jax.random.fold_in(key, stream), row))(rows)
                images = jax.vmap(transform, in_axes=(0, 0, None))(keys, images, self)
        labels = y
        if self.label_smoothing or any(name in MIXERS for name in self.names):
            labels = y if y.ndim > 1 else jax.nn.one_hot(y, self.num_classes)
            if self.label_smoothing:
                labels = optax.smooth_labels(labels, self.label_smoothing)
            images, labels = self._mix(images, labels, jax.random.fold_in(key, len(PER_IMAGE)))
        return {**batch, "x": images[..., 0] if grey else images, "y": labels}

    def _mix(self, images, labels, key):
        choice_key, weight_key, box_key = jax.random.split(key, 3)
        mixers = [m for m in ("mixup", "cutmix") if m in self.names]
        if not mixers:
            return images, labels
        alpha = {"mixup": self.mixup_alpha, "cutmix": self.cutmix_alpha}
        if len(mixers) == 1:
            return MIXERS[mixers[0]](images, labels, weight_key, box_key, alpha[mixers[0]])
        return jax.lax.cond(jax.random.bernoulli(choice_key),
                            lambda: mixup(images, labels, weight_key, box_key, self.mixup_alpha),
                            lambda: cutmix(images, labels, weight_key, box_key, self.cutmix_alpha))


def crop(key, image, settings: Augment):
    """A random crop of the image padded by `crop_padding` zeros on each side, the image's own size."""
    p = settings.crop_padding
    return dm_pix.random_crop(key, jnp.pad(image, ((p, p), (p, p), (0, 0))), image.shape)


def flip(key, image, _):
    return dm_pix.random_flip_left_right(key, image)


def resized_crop(key, image, _):
    """Inception's random resized crop: a box of 8-100% of the area and aspect ratio 3/4 to 4/3 (clipped to the
    image), resized back to the image's size bilinearly."""
    height, width = image.shape[:2]
    area_key, ratio_key, y_key, x_key = jax.random.split(key, 4)
    area = jax.random.uniform(area_key, minval=RESIZED_CROP_SCALE[0], maxval=RESIZED_CROP_SCALE[1]) * height * width
    log_ratio = jax.random.uniform(ratio_key, minval=jnp.log(RESIZED_CROP_RATIO[0]),
                                   maxval=jnp.log(RESIZED_CROP_RATIO[1]))
    box_w = jnp.clip(jnp.sqrt(area * jnp.exp(log_ratio)), 1.0, width)
    box_h = jnp.clip(jnp.sqrt(area / jnp.exp(log_ratio)), 1.0, height)
    top = jax.random.uniform(y_key) * (height - box_h)
    left = jax.random.uniform(x_key) * (width - box_w)
    scale = jnp.stack([height / box_h, width / box_w])
    return jax.image.scale_and_translate(image, image.shape, (0, 1), scale, -jnp.stack([top, left]) * scale,
                                         method="linear", antialias=False).astype(image.dtype)


def mixup(images, labels, weight_key, _, alpha: float):
    """Zhang et al. 2018: each image and its label mixed with the mirrored row's, by a weight ~ Beta(alpha, alpha)."""
    weight = jax.random.beta(weight_key, alpha, alpha)
    return weight * images + (1 - weight) * images[::-1], weight * labels + (1 - weight) * labels[::-1]


def cutmix(images, labels, weight_key, box_key, alpha: float):
    """Yun et al. 2019: a box of the mirrored row's image pasted in, the labels mixed by the area it keeps."""
    height, width = images.shape[1:3]
    weight = jax.random.beta(weight_key, alpha, alpha)
    cut = jnp.sqrt(1 - weight)
    cy, cx = jax.random.uniform(box_key, (2,)) * jnp.array([height, width])
    top, bottom = jnp.clip(cy - cut * height / 2, 0, height), jnp.clip(cy + cut * height / 2, 0, height)
    left, right = jnp.clip(cx - cut * width / 2, 0, width), jnp.clip(cx + cut * width / 2, 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside = ((rows >= jnp.floor(top)) & (rows < jnp.floor(bottom))
              & (cols >= jnp.floor(left)) & (cols < jnp.floor(right)))
    kept = 1 - jnp.mean(inside)
    mixed = jnp.where(inside[None, :, :, None], images[::-1], images)
    return mixed, kept * labels + (1 - kept) * labels[::-1]


MIXERS = {"mixup": mixup, "cutmix": cutmix}
PER_IMAGE = (("resized_crop", resized_crop), ("crop", crop), ("flip", flip))
