"""Sampling text from a trained language model from the command line: the flags an experiment mixes into its
config, and the function its `--mode=sample` calls.

    @dataclasses.dataclass(frozen=True)
    class CharModel(TextSampling, Config): ...

    def main(config, command):
        return sampling.sample(config) if config.mode == "sample" else bmjax.run(config, command)

Any model `bmjax.generate.generate` decodes (a GPT, a recurrent LM) samples this way.
"""

import dataclasses
from typing import Optional

import jax
import numpy as np

from bmjax.config import field
from bmjax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class TextSampling:
    mode: str = field("train", "Train, or sample from the trained model in --workdir.", ("train", "sample"),
                      trains=False)
    prompt: str = field("\n", "Text the samples continue (\\n and \\t stand for a newline and a tab).",
                        trains=False)
    max_new_tokens: Optional[int] = field(None, "Characters to sample (default: fill the block); past the block, "
                                                "the model reads a sliding window of the latest characters.",
                                          trains=False)
    temperature: float = field(0.8, "Sampling temperature; 0 takes the most likely character.", trains=False)
    top_k: Optional[int] = field(None, "Sample among the k most likely characters.", trains=False)
    top_p: Optional[float] = field(None, "Sample among the most likely characters holding this probability.",
                                   trains=False)
    num_samples: int = field(1, "Samples to draw.", trains=False)

    def validate(self):
        super().validate()
        if self.temperature < 0:
            raise UsageError(f"--temperature must not be negative, got {self.temperature}; 0 samples greedily")
        for name in ("top_k", "max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"--top_p must lie in (0, 1], got {self.top_p}")
        if self.num_samples < 1:
            raise UsageError(f"--num_samples must be at least 1, got {self.num_samples}")
        return self


def sample(config: TextSampling) -> list[str]:
    """Continues --prompt with the newest checkpoint of the run in --workdir; prints and returns the samples.
    The model and tokenizer are the run's own; only the sampling flags are read from `config`."""
    import bmjax
    from bmjax.generate import generate

    run = bmjax.restore(config.workdir)
    prompt = run.tokenizer.encode(config.prompt.replace("\\n", "\n").replace("\\t", "\t"))
    new_tokens = config.max_new_tokens or max(1, run.config.block_size - len(prompt))
    tokens = generate(run.model, run.params, np.repeat(prompt[None], config.num_samples, 0), new_tokens,
                      jax.random.PRNGKey(config.seed), temperature=config.temperature or 1.0,
                      greedy=config.temperature == 0, top_k=config.top_k, top_p=config.top_p)
    texts = [run.tokenizer.decode(row) for row in np.asarray(tokens)]
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1} (step {run.step}) ---\n{text}")
    return texts
