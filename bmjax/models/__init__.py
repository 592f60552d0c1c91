"""Models: one file per family, each registering a builder under the name `--model` takes.

    model = models.build("mlp", config, models.ModelIO(num_outputs=10))

An experiment file declares a model of its own with `@models.register(name)`, or builds it in its config's
`build_model(io)`.
"""

from bmjax.models.registry import CARRY, REGISTRY, ModelIO, build, names, register
from bmjax.models import (alexnet, audio, bert, cnn, efficientnet, gpt, inception, mlp,  # noqa: F401
                          recommenders, resnet, rnn, t5, vgg, vit, vqvae, wavenet)  # (each registers its builders)
from bmjax.models.bert import BertForMaskedLM, BertForSequenceClassification
from bmjax.models.cnn import SeedCNN
from bmjax.models.gpt import GPT
from bmjax.models.mlp import MLP
from bmjax.models.t5 import T5
from bmjax.models.vit import ViT

# The convolutional networks of the vision zoo, by the names --model takes (each registered in its family's file).
ZOO = ("alexnet",
       *(f"vgg{depth}{bn}" for depth in (11, 13, 16, 19) for bn in ("", "_bn")),
       *(f"resnet{depth}" for depth in (18, 34, 50, 101, 152)),
       *(f"resnet{depth}" for depth in (20, 32, 44, 56)),  # the CIFAR ResNets of He et al. (2016)
       "googlenet",
       *(f"efficientnet_b{i}" for i in range(4)))

__all__ = ["CARRY", "REGISTRY", "ZOO", "ModelIO", "build", "names", "register", "BertForMaskedLM", "BertForSequenceClassification",
           "SeedCNN", "GPT", "MLP", "T5", "ViT"]
