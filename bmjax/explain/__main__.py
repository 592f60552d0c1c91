"""python -m bmjax.explain --workdir=RUN --method=METHOD --index=N: why a trained classifier predicts what it does
for example N of its dataset.

Writes OUT/{split}_{index}_{method}.png (the input beside its attribution map, or the tokens coloured by their
scores) and .json (the numbers: attributions, predicted class and probability, integrated gradients'
completeness gap). Which methods fit which models:

  saliency, smoothgrad, integrated_gradients   any classifier; on token inputs (BERT, RNN and other text
                                               classifiers) they act on the token embeddings: gradient x input
                                               summed over each token's embedding vector
  gradcam                                      convolutional networks of images (cnn, resnet, vgg, ...): the last
                                               convolution, or --layer
  attention_rollout                            transformers: ViT (over the patch grid), BERT (over the tokens)
"""

import sys

from absl import app, flags, logging

from bmjax.errors import UsageError, exit_on_usage_error
from bmjax.explain.classifier import METHODS

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run to explain.")
_METHOD = flags.DEFINE_enum("method", "integrated_gradients", METHODS, "The explanation method (see above).")
_INDEX = flags.DEFINE_integer("index", 0, "The example of --split to explain.")
_SPLIT = flags.DEFINE_enum("split", "test", ("train", "validation", "test"), "The split of the run's dataset.")
_TARGET = flags.DEFINE_integer("target", None, "The class explained (default: the predicted one).")
_STEPS = flags.DEFINE_integer("steps", 64, "Integrated gradients: intervals of the trapezoid rule along the path.")
_SAMPLES = flags.DEFINE_integer("samples", 32, "SmoothGrad: noisy copies of the input.")
_NOISE = flags.DEFINE_float("noise", 0.15, "SmoothGrad: the noise's standard deviation as a share of the input's "
                                           "range (max - min).")
_LAYER = flags.DEFINE_string("layer", None, "Grad-CAM: the module path whose output is explained, e.g. Conv_1 "
                                            "(default: the last convolution).")
_SEED = flags.DEFINE_integer("seed", None, "For a run of many seeds, the seed whose parameters are explained "
                                           "(default: its first).")
_OUT = flags.DEFINE_string("out", None, "Folder of the PNG and JSON files (default: WORKDIR/explanations).")


@exit_on_usage_error
def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {' '.join(argv[1:])}; every setting is a --flag (see --help)")
    if not _WORKDIR.value:
        raise UsageError("--workdir is required: the folder of a trained run")
    from bmjax.explain.runs import explain_example

    written = explain_example(_WORKDIR.value, method=_METHOD.value, index=_INDEX.value, split=_SPLIT.value,
                              target=_TARGET.value, steps=_STEPS.value, samples=_SAMPLES.value, noise=_NOISE.value,
                              layer=_LAYER.value, seed=_SEED.value, out=_OUT.value)
    print(written["summary"])
    print(f"wrote {written['png']} and {written['json']}")


def parse(argv):
    """absl's parser, with a bad flag as one `error:` line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {' '.join(str(e).split())} (--help lists the flags)", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse)
