"""An example of a trained run explained into files: `explain_example(workdir, method=..., index=...)`, what
`python -m bmjax.explain` does."""

import json
import os
from typing import Optional

import jax
import numpy as np

from bmjax.errors import UsageError
from bmjax.explain import classifier, figures


def explain_example(workdir: str, *, method: str, index: int, split: str = "test", target: Optional[int] = None,
                    steps: int = 64, samples: int = 32, noise: float = 0.15, layer: Optional[str] = None,
                    seed: Optional[int] = None, out: Optional[str] = None) -> dict:
    """Explains example `index` of the run's `split` by `method` and writes OUT/{split}_{index}_{method}.png and
    .json (OUT defaults to WORKDIR/explanations); returns {"png", "json", "summary", "record"}."""
    import bmjax

    workdir = os.path.abspath(os.path.expanduser(workdir))
    run = bmjax.restore(workdir, seed=seed)
    task = run.info.task if run.info else None
    if task != "classification":
        raise UsageError(f"explanations are of a classifier's class scores, and the run in {workdir} is a {task} run; "
                         "explain a classification run")
    x, label = example(run, workdir, split, index)
    explanation = classifier.explain(run.model, run.variables, x, method, target=target, steps=steps,
                                     samples=samples, noise=noise, layer=layer)
    class_names = run.info.class_names if run.info else None
    pieces = (pieces_of(explanation.tokens, run.tokenizer, getattr(run.model, "pad_id", 0))
              if explanation.tokens is not None else None)

    out = os.path.abspath(out or os.path.join(workdir, "explanations"))
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"{split}_{index}_{method}")
    figures.save(explanation, x, stem + ".png", class_names=class_names, pieces=pieces)
    numbers = record(explanation, workdir=workdir, split=split, index=index, label=label, class_names=class_names,
                     pieces=pieces)
    with open(stem + ".json", "w") as f:
        json.dump(numbers, f, indent=1)
    return {"png": stem + ".png", "json": stem + ".json", "record": numbers,
            "summary": f"{figures.title(explanation, class_names)}; label {numbers['label']}"}


def example(run, workdir: str, split: str, index: int):
    """(x, label) of example `index` of `split` of the run's dataset, read as the run read it."""
    from bmjax import data
    from bmjax.train.supervised import tokenizer_for

    dataset = data.load(data.DataSpec.of(run.config, tokenizer=tokenizer_for(run.config, workdir)))
    source = getattr(dataset, split)
    if source is None:
        raise UsageError(f"the run's dataset {run.config.dataset} has no {split} split; use --split=test")
    if not 0 <= index < len(source):
        raise UsageError(f"--index={index} is outside the {split} split's {len(source)} examples; choose one in "
                         f"0..{len(source) - 1}")
    batch = source[np.array([index])]
    return jax.tree.map(lambda a: np.asarray(a)[0], batch["x"]), np.asarray(batch["y"])[0]


def pieces_of(tokens: np.ndarray, tokenizer, pad_id: int = 0) -> list:
    """Each token's text, up to the last token that is not padding."""
    from bmjax.data.text import SPECIAL_PIECES

    real = np.nonzero(tokens != pad_id)[0]
    ids = tokens[:real[-1] + 1] if len(real) else tokens
    has_specials = hasattr(tokenizer, "cls_id")  # tokenizers made for classification put them first

    def piece(i):
        if tokenizer is None:
            return str(i)
        if has_specials and i < len(SPECIAL_PIECES):
            return SPECIAL_PIECES[i]
        return tokenizer.decode([i]).strip() or "·"  # a space, or a piece that prints as nothing

    return [piece(int(i)) for i in ids]


def record(explanation, *, workdir, split, index, label, class_names, pieces) -> dict:
    name = lambda c: class_names[c] if class_names and c < len(class_names) else str(c)
    scores = np.asarray(explanation.attributions)
    out = {"workdir": workdir, "method": explanation.method, "split": split, "index": index,
           "label": int(label) if np.ndim(label) == 0 else np.asarray(label).tolist(),
           "predicted": explanation.predicted, "predicted_name": name(explanation.predicted),
           "probability": float(explanation.probabilities[explanation.predicted]),
           "target": explanation.target, "target_name": name(explanation.target),
           "target_probability": float(explanation.probabilities[explanation.target]),
           "probabilities": explanation.probabilities.tolist(), **explanation.details,
           "attributions_shape": list(scores.shape)}
    if pieces is not None:
        out["tokens"] = pieces
        out["token_ids"] = explanation.tokens[:len(pieces)].tolist()
        out["token_scores"] = scores[:len(pieces)].tolist()
    else:
        out["attributions"] = scores.tolist()
    return out
