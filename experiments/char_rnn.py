"""A character-level LSTM language model on Tiny Shakespeare (Karpathy's char-rnn), with its state carried from
each window to the next: truncated backpropagation through time.

    python -m experiments.char_rnn --workdir=runs/char_rnn --preset=cpu     # beside gpt_shakespeare_char's cpu
    python -m experiments.char_rnn --workdir=runs/char_rnn --mode=sample --prompt=ROMEO:

Row b of every batch reads the window that follows row b's last one, starting from the state that window left
(`--carry_state`; the state starts from zeros at each epoch). Evaluation reads each window of the validation
split from a zero state, as the GPT does, so their validation losses compare. Offline, prepare the corpus first:
`python -m bmjax.data prepare tiny_shakespeare --manual_dir=DIR` with DIR holding `input.txt`.
"""

import dataclasses
from typing import Optional

import bmjax
from bmjax import cli, sampling
from bmjax.config import Config, field
from bmjax.models.rnn import CELLS, INITS
from bmjax.sampling import TextSampling

PRESETS = {
    # Beside gpt_shakespeare_char --preset=cpu (4 layers x 128, 0.81 M parameters, 2000 steps of 12 x 64
    # characters): two LSTM layers of 240 (0.77 M parameters) on windows as long, for the same training time.
    "cpu": dict(hidden_size=240, num_layers=2, embed_dim=64, block_size=64, batch_size=32, train_steps=800,
                learning_rate=4e-3),
}


@dataclasses.dataclass(frozen=True)
class CharRnn(TextSampling, Config):
    dataset: str = "tiny_shakespeare"
    model: str = "rnn_lm"
    task: str = "language_model"
    block_size: Optional[int] = 100
    cell: str = field("lstm", "Recurrent cell.", CELLS)
    hidden_size: int = field(512, "Width of each recurrent layer.")
    num_layers: int = field(2, "Recurrent layers.")
    rnn_init: str = field("flax", "Initialisation of the recurrent cells: flax's (LeCun normal inputs, orthogonal "
                                "recurrence, zero biases) or torch's (all ~ U(+-1/sqrt(hidden_size))).", INITS)
    embed_dim: int = field(64, "Width of the character embeddings.")
    carry_state: bool = field(True, "Start each training window from the state the row's last window left "
                                    "(truncated backpropagation through time); else from zeros.")
    dropout: float = 0.0
    batch_size: int = 64
    eval_batch_size: int = 256
    train_steps: Optional[int] = 5000
    optimizer: str = "adam"
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"
    min_learning_rate: float = 1e-4
    clip_grad_norm: Optional[float] = 5.0
    log_every_steps: int = 50
    eval_every_steps: Optional[int] = 250
    checkpoint_every_steps: Optional[int] = 500


def main(config: CharRnn, command: str = "experiments.char_rnn"):
    return sampling.sample(config) if config.mode == "sample" else bmjax.run(config, command)


if __name__ == "__main__":
    cli.main(CharRnn, presets=PRESETS, entry=main)
