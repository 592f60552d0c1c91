"""Pictures of an explanation: the input beside its attribution map (images), the tokens coloured by their scores
(text), or a bar per feature (vectors)."""

from typing import Optional, Sequence

import jax
import numpy as np

from bmjax.explain.classifier import Explanation

SIGNED = ("integrated_gradients",)  # attributions whose sign matters; the others are shown as magnitudes


def is_image(x) -> bool:
    shape = np.shape(x)
    return (len(shape) == 2 and min(shape) > 1) or (len(shape) == 3 and min(shape[:2]) > 1 and shape[2] in (1, 3, 4))


def heat_map(explanation: Explanation) -> np.ndarray:
    """The [height, width] map shown: Grad-CAM's and rollout's grids as they are; gradients summed over the
    channels (integrated gradients, signed) or their largest magnitude over the channels (saliency, SmoothGrad)."""
    a = np.asarray(explanation.attributions, np.float32)
    signed = explanation.method in SIGNED
    if explanation.method in ("gradcam", "attention_rollout"):  # already a grid
        return a
    if a.ndim == 3:
        return a.sum(axis=-1) if signed else np.abs(a).max(axis=-1)
    return a if signed else np.abs(a)


def title(explanation: Explanation, class_names: Optional[Sequence[str]] = None) -> str:
    name = lambda c: class_names[c] if class_names and c < len(class_names) else str(c)
    p = explanation.probabilities
    words = [f"{explanation.method} for class {name(explanation.target)} (p={p[explanation.target]:.3f})"]
    if explanation.target != explanation.predicted:
        words.append(f"predicted {name(explanation.predicted)} (p={p[explanation.predicted]:.3f})")
    if "completeness" in explanation.details:
        words.append(f"completeness gap {100 * explanation.details['completeness']['relative_gap']:.2f}%")
    return "; ".join(words)


def figure(explanation: Explanation, x, *, class_names=None, pieces: Optional[Sequence[str]] = None):
    """A matplotlib Figure of `explanation` of input `x` (`pieces`: a token input's strings, padding left out)."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it is

    if explanation.tokens is not None:
        pieces = list(pieces) if pieces is not None else [str(t) for t in explanation.tokens]
        places = token_layout(pieces)
        lines = 1 + max(line for _, line in places)
        fig = Figure(figsize=(10, 1.0 + LINE_INCHES * lines))
        _tokens(fig, explanation, pieces, places, lines)
        fig.suptitle(title(explanation, class_names), fontsize=10)
        return fig
    if is_image(x):
        fig = Figure(figsize=(10, 3.6))
        _image(fig, explanation, np.asarray(x, np.float32))
    else:
        fig = Figure(figsize=(10, 3.6))
        _features(fig, explanation, np.asarray(x, np.float32).reshape(-1))
    fig.suptitle(title(explanation, class_names), fontsize=10)
    fig.tight_layout()
    return fig


def save(explanation: Explanation, x, path: str, **options) -> str:
    figure(explanation, x, **options).savefig(path, dpi=110)
    return path


def _limits(values: np.ndarray, signed: bool):
    top = float(np.max(np.abs(values))) or 1.0
    return (-top, top, "RdBu_r") if signed else (0.0, top, "inferno")


def _image(fig, explanation: Explanation, image: np.ndarray):
    image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    grey = image.ndim == 2
    shown = (image - image.min()) / max(float(image.max() - image.min()), 1e-12)
    heat = heat_map(explanation)
    signed = explanation.method in SIGNED
    low, high, cmap = _limits(heat, signed)
    axes = fig.subplots(1, 3)
    axes[0].imshow(shown, cmap="gray" if grey else None)
    axes[0].set_title("input", fontsize=9)
    picture = axes[1].imshow(heat, cmap=cmap, vmin=low, vmax=high)
    axes[1].set_title({"gradcam": f"Grad-CAM at {explanation.details.get('layer')}",
                       "attention_rollout": "rollout over the patches"}.get(explanation.method, "attribution"),
                      fontsize=9)
    fig.colorbar(picture, ax=axes[1], fraction=0.046)
    # The map at the image's size over the image: coarse grids stretched (patches keep their edges).
    method = "nearest" if explanation.method == "attention_rollout" else "linear"
    over = np.asarray(jax.image.resize(heat, shown.shape[:2], method)) if heat.shape != shown.shape[:2] else heat
    axes[2].imshow(shown, cmap="gray" if grey else None)
    axes[2].imshow(over, cmap=cmap, vmin=low, vmax=high, alpha=0.55)
    axes[2].set_title("over the input", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def _features(fig, explanation: Explanation, values: np.ndarray):
    scores = np.asarray(explanation.attributions, np.float32).reshape(-1)
    axes = fig.subplots(1, 2)
    index = np.arange(len(values))
    axes[0].bar(index, values, color="grey")
    axes[0].set_title("input features", fontsize=9)
    axes[1].bar(index, scores, color=np.where(scores >= 0, "tab:red", "tab:blue"))
    axes[1].set_title("attribution", fontsize=9)
    for ax in axes:
        ax.set_xlabel("feature")
        ax.grid(alpha=0.3)


LINE_INCHES = 0.4  # the height of a line of tokens
CHAR_WIDTH = 0.0105  # a 10-point monospace character as a share of the text's width (8.6 inches)


def token_layout(pieces: Sequence[str]) -> list:
    """(left edge as a share of the width, line) of each token, in reading order, wrapped at the right edge."""
    places, x, line = [], 0.0, 0
    for piece in pieces:
        width = CHAR_WIDTH * (len(piece) + 1.2)
        if x + width > 1.0 and x > 0:
            x, line = 0.0, line + 1
        places.append((x, line))
        x += width
    return places


def _tokens(fig, explanation: Explanation, pieces: Sequence[str], places: list, lines: int):
    """The tokens as boxes coloured by score."""
    import matplotlib
    from matplotlib import cm, colors

    scores = np.asarray(explanation.attributions, np.float32).reshape(-1)[:len(pieces)]
    signed = explanation.method in SIGNED + ("saliency", "smoothgrad")  # gradient x input has a sign
    low, high, cmap = _limits(scores, signed)
    palette, norm = matplotlib.colormaps["RdBu_r" if signed else "Reds"], colors.Normalize(low, high)
    height = LINE_INCHES * lines / fig.get_figheight()
    ax = fig.add_axes((0.02, 0.9 - height - 0.55 / fig.get_figheight(), 0.86, height))
    ax.set_xlim(0, 1)
    ax.set_ylim(lines, 0)
    ax.axis("off")
    for piece, score, (x, line) in zip(pieces, scores, places):
        face = palette(norm(score))
        dark = 0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2] < 0.5
        ax.text(x, line + 0.5, piece, family="monospace", fontsize=10, va="center", color="white" if dark else "black",
                bbox=dict(boxstyle="round,pad=0.25", facecolor=face, edgecolor="none"))
    bar = fig.add_axes((0.91, 0.1, 0.015, 0.65))
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=palette), cax=bar)
