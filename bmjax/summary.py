"""--summary: each network's layer table (Flax's `tabulate`: input and output shapes, parameters, FLOPs), printed
and kept in result.json, without training."""

import json
import os

import flax.linen as nn
import jax

from bmjax import console

KEY = "summary"  # result.json's entry: {network name: its table as text}


def tables(program) -> dict[str, str]:
    """{name: table} for the networks the program trains (`program.networks()`: name -> (module, example inputs))."""
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
    rendered = {}
    for name, (module, inputs) in program.networks().items():
        table = nn.tabulate(module, rngs, compute_flops=True, console_kwargs={"width": 160, "force_terminal": False})
        rendered[name] = table(*inputs, train=False)
    return rendered


def write(program, result_path: str, primary: bool) -> dict:
    """Prints the tables and adds them to result.json (what it holds already stays); returns result.json's content."""
    result = kept(result_path)
    result[KEY] = tables(program)
    if primary:
        for table in result[KEY].values():
            print(table)
        with open(result_path, "w") as f:
            json.dump(result, f, indent=2)
        console.say(f"wrote the layer table{'s' if len(result[KEY]) > 1 else ''} to {result_path}; train without "
                    "--summary")
    return result


def kept(result_path: str) -> dict:
    """result.json's content so far ({} before the first run or --summary)."""
    if not os.path.exists(result_path):
        return {}
    with open(result_path) as f:
        return json.load(f)
