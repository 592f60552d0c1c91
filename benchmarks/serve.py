"""Serving load: requests per second and latency of `python -m bmjax.serve` on the seed MLP's StableHLO export.

    python -m benchmarks.serve --data_dir=DIR [--manual_dir=RAW_MNIST]   # trains, exports, serves: about 3 minutes
    python -m benchmarks.serve --model=EXPORT_DIR                        # any export already written

The server runs in its own process, as a user starts it; clients are threads of this process, each sending
its requests one after another over one keep-alive connection for --seconds per setting, with a request body
encoded once beforehand (generated inputs, `bmjax.export.example_batch`: the cost does not depend on their
values). A request's latency is
from sending it to having decoded its JSON answer. Beside them, the exported model called in this process
(`bmjax.export.load(DIR)(x)`, no HTTP or JSON) shows what the serving itself adds. Prints a table; writes
benchmarks/serve_results.json.
"""

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from benchmarks import cpu_name

ROOT = Path(__file__).resolve().parents[1]

_MODEL = flags.DEFINE_string("model", None, "An export to serve; default: train the seed MLP and export it.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory holding (or receiving) mnist.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Raw MNIST files, to prepare mnist offline first.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 500, "Training steps of the seed MLP before it is exported.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "32"], "Examples per request.")
_CLIENTS = flags.DEFINE_list("clients", ["1", "4"], "Concurrent clients.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "How long each setting is loaded.")
_RESULTS = flags.DEFINE_string("results", str(ROOT / "benchmarks" / "serve_results.json"),
                                "Where to write the figures.")


def export_seed_mlp(directory: Path) -> tuple[Path, dict]:
    """Trains experiments.mnist_mlp for --train_steps and exports it; (export folder, the run's result.json)."""
    data_args = [f"--data_dir={_DATA_DIR.value}"] if _DATA_DIR.value else []
    if _MANUAL_DIR.value:
        subprocess.run([sys.executable, "-m", "bmjax.data", "prepare", "mnist", f"--manual_dir={_MANUAL_DIR.value}",
                        *data_args], cwd=ROOT, check=True)
    run = directory / "mlp"
    subprocess.run([sys.executable, "-m", "experiments.mnist_mlp", f"--workdir={run}", *data_args,
                    f"--train_steps={_TRAIN_STEPS.value}", f"--log_every_steps={_TRAIN_STEPS.value}"], cwd=ROOT,
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "bmjax.export", f"--workdir={run}", f"--out={run / 'export'}"], cwd=ROOT,
                   check=True)
    return run / "export", json.loads((run / "result.json").read_text())


def start_server(model: Path, batch_sizes: list[int]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "bmjax.serve", f"--model={model}", "--port=0",
                                f"--max_batch={max(batch_sizes)}", f"--warmup={','.join(map(str, batch_sizes))}"],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("serving "):
        process.kill()
        raise SystemExit(f"the server did not start: {line}")
    print(line.strip())
    return process, line.split(" on ")[1].split()[0]


def load(url: str, body: bytes, clients: int, seconds: float) -> dict:
    """`clients` threads posting `body` for `seconds`; requests/s and latency percentiles."""
    host = url.removeprefix("http://")
    latencies = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    deadline = []

    def client(mine):
        conn = http.client.HTTPConnection(host, timeout=60)
        start.wait()
        while time.perf_counter() < deadline[0]:
            began = time.perf_counter()
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(answer)
            mine.append(time.perf_counter() - began)
        conn.close()

    threads = [threading.Thread(target=client, args=(mine,)) for mine in latencies]
    for t in threads:
        t.start()
    began = time.perf_counter()
    deadline.append(began + seconds)
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    every = np.concatenate([np.asarray(m) for m in latencies]) * 1000
    return {"requests": int(every.size), "requests_per_second": every.size / elapsed,
            "p50_ms": float(np.percentile(every, 50)), "p99_ms": float(np.percentile(every, 99))}


def direct(model, x, seconds: float) -> dict:
    """The exported model called in this process, one batch after another."""
    model(x)
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        began = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - began)
    every = np.asarray(times) * 1000
    return {"requests": int(every.size), "requests_per_second": every.size / (np.sum(times)),
            "p50_ms": float(np.percentile(every, 50)), "p99_ms": float(np.percentile(every, 99))}


def main(argv):
    del argv
    from bmjax import export

    batch_sizes, client_counts = [int(b) for b in _BATCH_SIZES.value], [int(c) for c in _CLIENTS.value]
    with tempfile.TemporaryDirectory() as tmp:
        trained = None
        model_dir = Path(_MODEL.value) if _MODEL.value else None
        if model_dir is None:
            model_dir, trained = export_seed_mlp(Path(tmp))
        model = export.load(str(model_dir))
        spec = model.inputs
        if set(spec) != {"shape", "dtype"}:
            raise SystemExit(f"this benchmark sends one input array; {model_dir} takes named inputs {sorted(spec)}")
        rows = []
        for batch in batch_sizes:
            x = export.example_batch(jax.ShapeDtypeStruct(tuple(spec["shape"]), spec["dtype"]), batch)
            rows.append({"setting": "in process, no HTTP", "batch": batch, "clients": 1,
                         **direct(model, x, _SECONDS.value / 2)})
        process, url = start_server(model_dir, batch_sizes)
        try:
            for batch in batch_sizes:
                x = export.example_batch(jax.ShapeDtypeStruct(tuple(spec["shape"]), spec["dtype"]), batch)
                body = json.dumps({"inputs": x.tolist()}).encode()
                for clients in client_counts:
                    rows.append({"setting": "HTTP", "batch": batch, "clients": clients, "body_bytes": len(body),
                                 **load(url, body, clients, _SECONDS.value)})
        finally:
            process.terminate()
            process.wait(60)

    load_average = os.getloadavg()[0]  # other work on the machine, which the figures share its cores with
    print(f"\nmachine: {cpu_name()}, {os.cpu_count()} cores, load average {load_average:.1f}; model "
          f"{model.meta.get('config_class')} inputs {spec}; {_SECONDS.value:g} s per setting\n")
    print("| setting | batch | clients | requests/s | examples/s | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in sorted(rows, key=lambda r: (r["batch"], r["setting"] != "in process, no HTTP", r["clients"])):
        print(f"| {r['setting']} | {r['batch']} | {r['clients']} | {r['requests_per_second']:.0f} | "
              f"{r['requests_per_second'] * r['batch']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    Path(_RESULTS.value).write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
        "load_average": load_average, "model": model.meta,
        "trained": {"steps": trained["steps"], "test_accuracy": trained["test"]["accuracy"]} if trained else None,
        "seconds_per_setting": _SECONDS.value, "rows": rows}, indent=2))


if __name__ == "__main__":
    app.run(main)
