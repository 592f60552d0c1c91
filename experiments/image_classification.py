"""Image classification with any network of the zoo, on any TFDS image dataset.

    python -m experiments.image_classification --workdir=runs/resnet20 --preset=resnet20_fashion_mnist
    python -m experiments.image_classification --workdir=runs/vgg --model=vgg11_bn --dataset=cifar10
    python -m experiments.image_classification --workdir=runs/b0 --model=efficientnet_b0 --stem=imagenet

`--model` takes alexnet, vgg11..vgg19 (and their _bn variants), resnet18..resnet152, the CIFAR resnets
resnet20..resnet56, googlenet and efficientnet_b0..b3. `--stem=auto` gives images under 64 pixels (MNIST,
Fashion-MNIST, CIFAR) each model's small-image variant: no early striding, so that 28x28 maps are not
reduced to nothing. The defaults are the CIFAR recipe of He et al. (2016): SGD with Nesterov momentum 0.9,
weight decay 5e-4 on the weight matrices only, a linear warm-up then a cosine decay, random crops of the
image padded by 4 pixels and horizontal flips (`--augment=crop` on digits, where a mirrored digit is another).

Offline, prepare Fashion-MNIST first: `python -m bmjax.data prepare fashion_mnist --manual_dir=DIR
--data_dir=TFDS_DIR` with DIR holding its four idx .gz files, then pass `--data_dir=TFDS_DIR`.
"""

import dataclasses

from bmjax import cli, models
from bmjax.config import Config, field
from bmjax.errors import UsageError
from bmjax.models.convnet import STEMS

PRESETS = {
    # He et al.'s ResNet-20 recipe on Fashion-MNIST.
    "resnet20_fashion_mnist": dict(model="resnet20", dataset="fashion_mnist", epochs=30, learning_rate=0.1),
    # A few steps of a small model, to see a run through on a CPU in seconds.
    "tiny": dict(model="resnet20", train_steps=20, batch_size=32, log_every_steps=10),
}


@dataclasses.dataclass(frozen=True)
class ImageClassification(Config):
    dataset: str = "fashion_mnist"
    model: str = field("resnet20", "A network of the zoo: " + ", ".join(models.ZOO) + ".", models.ZOO)
    stem: str = field("auto", "The network's first layers: imagenet (strided, for 224x224), small (unstrided, "
                              "for 28x28 and 32x32), or auto (small under 64 pixels).", STEMS)
    bn_momentum: float = field(0.9, "Momentum of BatchNorm's running averages (PyTorch's 0.1 is 0.9 here).")
    preactivation: bool = field(False, "ResNets: BatchNorm and ReLU before each convolution (He et al., "
                                       "Identity Mappings, 2016).")
    aux_heads: bool = field(False, "GoogLeNet: the two auxiliary classifiers, whose losses add with weight 0.3 "
                                   "in training.")
    stochastic_depth: float = field(0.2, "EfficientNet: the largest rate at which a block is skipped in "
                                         "training (rising linearly over the blocks).")
    dropout: float = field(0.5, "Dropout of AlexNet's and VGG's classifiers.")
    augment: str = "crop,flip"
    validation_split: float = 0.1
    batch_size: int = 128
    epochs: int = 30
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_schedule: str = "warmup_cosine"
    warmup_steps: int = 400
    steps_per_call: int = 1  # XLA:CPU runs convolutions inside loops slowly (jax#12868); 0 on TPU and GPU

    def validate(self) -> "ImageClassification":
        super().validate()
        if not 0 < self.bn_momentum < 1:
            raise UsageError(f"--bn_momentum must lie in (0, 1), got {self.bn_momentum}")
        if not 0 <= self.stochastic_depth < 1:
            raise UsageError(f"--stochastic_depth must lie in [0, 1), got {self.stochastic_depth}")
        return self


if __name__ == "__main__":
    cli.main(ImageClassification, presets=PRESETS)
