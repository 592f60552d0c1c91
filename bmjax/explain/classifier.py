"""One example of a linen classifier explained: `explain(model, variables, x, method)`.

What the methods need from inside the model is taken without changing its code: `flax.linen.intercept_methods`
replaces a token embedding's output (gradients act on the embedding vectors) or adds a zero perturbation to a
convolution's output (its gradient is Grad-CAM's), and `recorded_attention` keeps the weights that
`bmjax.models.transformer.attend` computes (attention rollout).
"""

import contextlib
import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bmjax.data import preprocess
from bmjax.errors import UsageError
from bmjax.explain import methods
from bmjax.models import transformer

METHODS = ("saliency", "smoothgrad", "integrated_gradients", "gradcam", "attention_rollout")
GRADIENT_METHODS = METHODS[:3]


@dataclasses.dataclass
class Explanation:
    method: str
    target: int  # the class explained
    predicted: int
    probabilities: np.ndarray  # [classes]
    # Shaped like the input (gradient methods on images and features), one score per token (token inputs),
    # or a map over a grid (Grad-CAM: the convolution's; attention rollout on a ViT: the patches').
    attributions: np.ndarray
    tokens: Optional[np.ndarray] = None  # a token input's ids
    details: dict = dataclasses.field(default_factory=dict)  # IG's completeness; Grad-CAM's layer; grid shapes


def explain(model: nn.Module, variables: dict, x, method: str, *, target: Optional[int] = None, steps: int = 64,
            samples: int = 32, noise: float = 0.15, layer: Optional[str] = None, rng=None) -> Explanation:
    """Explains `model`'s class scores for one example `x` (no batch axis; token ids, or a dict with "tokens")
    by `method`, for class `target` (default: the predicted one)."""
    if method not in METHODS:
        raise UsageError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    for name, value in (("steps", steps), ("samples", samples)):
        if value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")
    if noise < 0:
        raise UsageError(f"--noise must not be negative, got {noise}")
    subject = Classifier(model, variables, preprocess.to_float(x))
    probabilities = np.asarray(jax.jit(lambda: probabilities_of(subject.logits()))())
    predicted = int(np.argmax(probabilities))
    target = predicted if target is None else int(target)
    if not 0 <= target < len(probabilities):
        raise UsageError(f"--target={target} is not a class of this model; choose one in 0..{len(probabilities) - 1}")
    explained = Explanation(method, target, predicted, probabilities, attributions=None, tokens=subject.tokens)
    if method in GRADIENT_METHODS:
        explained.attributions = np.asarray(by_gradients(subject, method, target, explained.details, steps=steps,
                                                         samples=samples, noise=noise, rng=rng))
    elif method == "gradcam":
        cam, path = subject.grad_cam(target, layer)
        explained.attributions = np.asarray(cam)
        explained.details.update(layer="/".join(path), grid=list(cam.shape))
    else:
        rollout = methods.attention_rollout(subject.attention())
        scores = np.asarray(rollout[0])  # what the first token (the class token the head reads) draws on
        if subject.tokens is None:
            grid = patch_grid(model, subject.x, len(scores) - 1)
            explained.attributions = scores[1:].reshape(grid)
            explained.details.update(grid=list(grid), class_token_share=float(scores[0]))
        else:
            explained.attributions = scores
    return explained


def by_gradients(subject: "Classifier", method: str, target: int, details: dict, *, steps, samples, noise, rng):
    """Saliency, SmoothGrad or integrated gradients of the target's score, with respect to the input or, for
    tokens, to their embedding vectors (gradient x input, summed over each vector)."""
    point, fn = subject.input_space(target)
    tokens = subject.tokens is not None
    if method == "saliency":
        gradient = jax.jit(lambda p: methods.saliency(fn, p))(point)
        attributions = gradient * point if tokens else gradient
    elif method == "smoothgrad":
        gradient = jax.jit(lambda p: methods.smoothgrad(fn, p, samples=samples, noise=noise, rng=rng))(point)
        attributions = gradient * point if tokens else gradient
    else:
        attributions = jax.jit(lambda p: methods.integrated_gradients(fn, p, None, steps))(point)
        details.update(completeness=methods.completeness(jax.jit(fn), point, None, attributions), steps=steps)
    return attributions.sum(axis=-1) if tokens else attributions


def probabilities_of(logits):
    """Class probabilities from a classifier's logits: softmax, or a single logit's sigmoid as [1 - p, p]."""
    if logits.shape[-1] == 1:
        p = jax.nn.sigmoid(logits[0])
        return jnp.stack([1 - p, p])
    return jax.nn.softmax(logits)


def class_score(logits, target: int):
    """The logit explained for class `target`; with a single (binary) logit z: z for class 1, -z for class 0."""
    if logits.shape[-1] == 1:
        return logits[0] if target == 1 else -logits[0]
    return logits[target]


def token_ids(x):
    """The token ids of a token input (an integer array, or a dict's "tokens"), else None."""
    tokens = x.get("tokens") if isinstance(x, dict) else x
    if tokens is None or not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
        return None
    return np.asarray(tokens)


def output_hook(path: tuple, transform):
    """An interceptor passing the output of the first call of the module at `path` through `transform`. Make one
    for each trace: it remembers the call it has changed."""
    done = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and not done and context.module.path == path:
            done.append(path)
            return transform(out)
        return out

    return interceptor


@contextlib.contextmanager
def recorded_attention():
    """Within it, the attention weights [batch, heads, queries, keys] of every `transformer.attend` call are
    appended to the list it gives, as the model computes them. (`MultiHeadAttention` looks `attend` up in its
    module at each call, so a stand-in there that passes the weights on unchanged sees them all.)"""
    weights, original = [], transformer.attend

    def attend(query, key, value, mask=None, bias=None, dropout=lambda w: w):
        def keep(w):
            weights.append(w)
            return dropout(w)

        return original(query, key, value, mask, bias, keep)

    transformer.attend = attend
    try:
        yield weights
    finally:
        transformer.attend = original


class Classifier:
    """A classifier and one example: its logits, and the inner values the methods need."""

    def __init__(self, model: nn.Module, variables: dict, x):
        self.model, self.variables, self.x = model, variables, x
        self.tokens = token_ids(x)
        self.name = type(model).__name__

    def logits(self, x=None, interceptor=None):
        """The float32 logits [classes] of `x` (default: the example), with `interceptor` in place."""
        batch = jax.tree.map(lambda a: jnp.asarray(a)[None], self.x if x is None else x)
        with nn.intercept_methods(interceptor) if interceptor else contextlib.nullcontext():
            out = self.model.apply(self.variables, batch, train=False)
        if out.ndim != 2:
            raise UsageError(f"explanations are of a classifier's class scores, but {self.name} outputs shape "
                             f"{tuple(out.shape)} for one example; explain a classification run")
        return out[0].astype(jnp.float32)

    def module_calls(self) -> list:
        """(path, module, output shape) of every module call in order, from one abstract evaluation."""
        calls = []

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and hasattr(out, "shape"):
                calls.append((context.module.path, context.module, tuple(out.shape), args))
            return out

        jax.eval_shape(lambda: self.logits(interceptor=record))
        return calls

    def input_space(self, target: int):
        """(point, fn): the continuous input the gradient methods act on (the example, or a token input's
        embedding vectors [len, embed]) and the target's score as a function of it."""
        if self.tokens is None:
            return self.x, lambda p: class_score(self.logits(p), target)
        shape = (1,) + self.tokens.shape
        paths = [path for path, module, _, args in self.module_calls()
                 if isinstance(module, nn.Embed) and args and jnp.shape(args[0]) == shape]
        if not paths:
            raise UsageError(f"{self.name} reads tokens without an nn.Embed of them; the gradient methods act on "
                             "token embeddings")

        def embeddings():
            kept = []
            self.logits(interceptor=output_hook(paths[0], lambda out: kept.append(out) or out))
            return kept[0][0]

        def score(e):
            replaced = output_hook(paths[0], lambda out: e[None].astype(out.dtype))
            return class_score(self.logits(interceptor=replaced), target)

        return jax.jit(embeddings)(), score

    def grad_cam(self, target: int, layer: Optional[str] = None):
        """(Grad-CAM map [height, width], the layer's path) at `layer` (a module path such as "Conv_1"; default:
        the last convolution)."""
        if self.tokens is not None:
            raise UsageError("gradcam explains convolutional networks of images; for token inputs use saliency, "
                             "smoothgrad, integrated_gradients or attention_rollout")
        calls = self.module_calls()
        spatial = {path: shape for path, _, shape, _ in calls if len(shape) == 4}
        convs = [path for path, module, shape, _ in calls if isinstance(module, nn.Conv) and len(shape) == 4]
        if layer is None:
            if not convs:
                raise UsageError(f"gradcam needs a convolutional network, and {self.name} has no 2-D convolution; "
                                 "use saliency, smoothgrad or integrated_gradients")
            path = convs[-1]
        else:
            path = tuple(part for part in layer.split("/") if part)
            if path not in spatial:
                names = ", ".join("/".join(p) for p in spatial) or "none"
                raise UsageError(f"--layer={layer} is not a module of {self.name} with an output [batch, height, "
                                 f"width, channels]; those are: {names}")

        def score(delta):
            kept = []
            hook = output_hook(path, lambda out: kept.append(out) or out + delta.astype(out.dtype))
            return class_score(self.logits(interceptor=hook), target), kept[0]

        gradient, activation = jax.jit(jax.grad(score, has_aux=True))(jnp.zeros(spatial[path], jnp.float32))
        return methods.grad_cam(activation[0].astype(jnp.float32), gradient[0]), path

    def attention(self) -> list:
        """Each attention layer's weights [heads, n, n] for the example, in the order the model computes them."""
        def computed():
            with recorded_attention() as kept:
                self.logits()
            return kept

        weights = jax.jit(computed)()
        if not weights:
            raise UsageError(f"attention_rollout needs a transformer built on bmjax.models.transformer (ViT, BERT), "
                             f"and {self.name} computes no attention; use saliency, smoothgrad or "
                             "integrated_gradients")
        shapes = {tuple(w.shape) for w in weights}
        if len(shapes) != 1 or weights[0].shape[-1] != weights[0].shape[-2]:
            raise UsageError(f"attention_rollout follows one sequence through self-attention layers of one size, but "
                             f"{self.name}'s attention weights have shapes {sorted(shapes)}")
        return [w[0] for w in weights]


def patch_grid(model: nn.Module, image, patches: int) -> tuple:
    """The (rows, columns) grid of a ViT's `patches` over `image` [height, width(, channels)]."""
    size = getattr(model, "patch_size", None)
    shape = np.shape(image)
    if size and len(shape) in (2, 3) and (shape[0] // size) * (shape[1] // size) == patches:
        return shape[0] // size, shape[1] // size
    raise UsageError(f"the {patches} tokens after {type(model).__name__}'s first do not form a patch grid of an "
                     f"image of shape {shape}; attention_rollout maps a ViT's patches or a text model's tokens")
