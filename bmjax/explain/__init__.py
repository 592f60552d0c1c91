"""Explanations of a trained classifier's predictions: gradient saliency, SmoothGrad, integrated gradients,
Grad-CAM and attention rollout.

    python -m bmjax.explain --workdir=runs/digits_cnn --method=integrated_gradients --index=0

    from bmjax import explain
    run = bmjax.restore("runs/digits_cnn")
    e = explain.explain(run.model, run.variables, x, "gradcam")    # e.attributions, e.predicted, e.details
    explain.integrated_gradients(fn, x, baseline=None, steps=64)  # any scalar fn of one input
    explain.explain_example("runs/digits_cnn", method="saliency", index=3)   # the command line's files
"""

from bmjax.explain.classifier import METHODS, Explanation, explain, recorded_attention
from bmjax.explain.runs import explain_example
from bmjax.explain.methods import (attention_rollout, completeness, grad_cam, integrated_gradients, saliency,
                                   smoothgrad)

__all__ = ["METHODS", "Explanation", "attention_rollout", "completeness", "explain", "explain_example", "grad_cam",
           "integrated_gradients", "recorded_attention", "saliency", "smoothgrad"]
