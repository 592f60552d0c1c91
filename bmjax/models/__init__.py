"""Models: one file per family, each registering a builder under the name `--model` takes.

    model = models.build("mlp", config, models.ModelIO(num_outputs=10))

An experiment file declares a model of its own with `@models.register(name)`, or builds it in its config's
`build_model(io)`.
"""

from bmjax.models.registry import REGISTRY, ModelIO, build, names, register
from bmjax.models import bert, cnn, gpt, mlp, t5, vit  # noqa: F401  (each registers its builders)
from bmjax.models.bert import BertForMaskedLM, BertForSequenceClassification
from bmjax.models.cnn import SeedCNN
from bmjax.models.gpt import GPT
from bmjax.models.mlp import MLP
from bmjax.models.t5 import T5
from bmjax.models.vit import ViT

__all__ = ["REGISTRY", "ModelIO", "build", "names", "register", "BertForMaskedLM", "BertForSequenceClassification",
           "SeedCNN", "GPT", "MLP", "T5", "ViT"]
