"""`python -m bmjax.serve --model=DIR --port=N`: an exported bmjax model (`python -m bmjax.export`) answering JSON
over HTTP.

    GET  /health    {"status": "ok", "format": ..., "inputs": the per-example input spec, "max_batch": N, ...}
    GET  /metadata  the export's export.json
    POST /predict   {"inputs": [example, ...]} or {"inputs": {"name": [example, ...], ...}}
                    -> {"outputs": [...]}, and for classifiers "predictions" (class indices) and "labels"

Each batch is padded with zero rows up to its bucket (the next power of two, at most --max_batch), so a few
compiled programs serve every batch size; the padding rows are sliced off the outputs. The standard library's
ThreadingHTTPServer answers each connection on a thread of its own (keep-alive, HTTP/1.1). XLA runs calls from
several threads at once, so requests are not serialised; only a bucket's first call, which compiles it, holds a
lock, so that racing requests do not compile one program twice.
"""

import contextlib
import http.server
import json
import math
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from typing import Any, Optional

import numpy as np
from absl import app, flags, logging

try:  # parses a batch of numbers about three times faster than the standard library, where it is installed
    import orjson
except ImportError:
    orjson = None

from bmjax.errors import UsageError, exit_on_usage_error

ROUTES = {"/health": "GET", "/metadata": "GET", "/predict": "POST"}
BYTES_PER_VALUE = 32  # a generous bound on a number's JSON text, for the request size limit
REQUEST_TIMEOUT_SECONDS = 30  # a connection that sends nothing this long is closed
SHUTDOWN_GRACE_SECONDS = 10  # how long a stopping server waits for the predictions in flight


class RequestError(Exception):
    """A request the server cannot answer: its HTTP status and a one-line message saying how to fix it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _is_spec(x) -> bool:
    return isinstance(x, dict) and set(x) == {"shape", "dtype"}


def buckets(max_batch: int) -> list[int]:
    """The batch sizes programs are compiled for: powers of two below `max_batch`, then `max_batch`."""
    sizes = [2 ** k for k in range(max(max_batch - 1, 1).bit_length()) if 2 ** k < max_batch]
    return sizes + [max_batch]


class Predictor:
    """An exported model behind JSON: checks and converts request inputs, pads batches to their bucket, and
    writes the outputs (with class predictions for classifiers)."""

    def __init__(self, model, max_batch: int = 256):
        if max_batch < 1:
            raise UsageError(f"--max_batch must be at least 1, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.buckets = buckets(max_batch)
        self.meta = dict(getattr(model, "meta", None) or {})
        self.spec = model.inputs
        self.named = not _is_spec(self.spec)
        specs = self.spec if self.named else {None: self.spec}
        self.shapes = {k: tuple(s["shape"]) for k, s in specs.items()}
        self.dtypes = {k: np.dtype(s["dtype"]) for k, s in specs.items()}
        self.vocab_size = self.meta.get("vocab_size")
        self.task = self.meta.get("task")
        self.class_names = self.meta.get("classes")
        values = sum(math.prod(shape) for shape in self.shapes.values())
        self.max_body_bytes = max_batch * max(values, 1) * BYTES_PER_VALUE + 65536
        self._compiled = set()
        self._compile_lock = threading.Lock()

    # Inputs.

    def parse(self, body: bytes):
        """The batch a request body holds, as the model's arrays, and its size; a RequestError if it holds none."""
        try:
            request = _loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(400, "the body is not UTF-8 text; send JSON such as {\"inputs\": [...]}") from None
        except json.JSONDecodeError as e:  # orjson's errors are of this class too
            raise RequestError(400, f"the body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                                    "send {\"inputs\": [...]}") from None
        except ValueError as e:  # NaN or Infinity, read by the standard library
            raise RequestError(400, f"{e}; send finite numbers") from None
        except RecursionError:
            raise RequestError(400, "the body's JSON is nested too deeply; send {\"inputs\": [...]}") from None
        if not isinstance(request, dict) or "inputs" not in request:
            got = f"an object with fields {', '.join(map(repr, request))}" if isinstance(request, dict) else \
                f"a JSON {_json_type(request)}"
            raise RequestError(400, f"the body must be a JSON object with an \"inputs\" field, got {got}; send "
                                    f"{self._example_request()}")
        unknown = sorted(set(request) - {"inputs"})
        if unknown:
            raise RequestError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; the body takes only "
                                    "\"inputs\"")
        inputs = request["inputs"]
        if not self.named:
            if isinstance(inputs, dict):
                raise RequestError(400, "this model takes one unnamed input, not named inputs; send "
                                        f"{self._example_request()}")
            x = self._array(inputs, None)
            return x, len(x)
        names = sorted(self.shapes)
        if not isinstance(inputs, dict):
            raise RequestError(400, f"this model takes named inputs ({', '.join(names)}); send "
                                    f"{self._example_request()}")
        missing, extra = sorted(set(names) - set(inputs)), sorted(set(inputs) - set(names))
        if missing or extra:
            problems = [f"lacks {', '.join(missing)}" if missing else "", f"has unknown {', '.join(extra)}" if extra
                        else ""]
            raise RequestError(400, f"\"inputs\" {' and '.join(filter(None, problems))}; the model takes "
                                    f"{', '.join(names)}")
        x = {name: self._array(inputs[name], name) for name in names}
        sizes = {name: len(a) for name, a in x.items()}
        if len(set(sizes.values())) > 1:
            raise RequestError(422, "the named inputs hold different numbers of examples "
                                    f"({', '.join(f'{k}: {v}' for k, v in sizes.items())}); send one row per "
                                    "example in each")
        return x, len(x[names[0]])

    def _array(self, value, name: Optional[str]) -> np.ndarray:
        """One input's batch as the model's dtype, its shape and range checked."""
        where = "\"inputs\"" if name is None else f"\"inputs\".{name}"
        shape, dtype = self.shapes[name], self.dtypes[name]
        wanted = f"examples shaped {list(shape)} ({dtype.name})"
        if not isinstance(value, list):
            raise RequestError(400, f"{where} must be a list of examples (a batch of {wanted}), got a JSON "
                                    f"{_json_type(value)}")
        if not value:
            raise RequestError(422, f"{where} is an empty batch; send at least one of the {wanted}")
        if len(value) > self.max_batch:
            raise RequestError(413, f"{where} holds {len(value)} examples, more than this server's --max_batch of "
                                    f"{self.max_batch}; split the batch")
        try:
            array = np.array(value)
        except (ValueError, OverflowError):  # rows of different lengths
            raise RequestError(422, f"{where} is ragged (its rows differ in length); send {wanted}") from None
        if array.dtype.kind in "OUS":
            raise RequestError(422, f"{where} holds values that are not numbers (strings, nulls, objects, or "
                                    f"integers too large); send {wanted}")
        if array.shape[1:] != shape:
            hint = "; for one example, send a list holding it" if array.shape == shape else ""
            raise RequestError(422, f"{where} holds examples shaped {list(array.shape[1:])}, but the model takes "
                                    f"{wanted}{hint}")
        return self._convert(array, dtype, where)

    def _convert(self, array: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
        if array.dtype.kind == "b" and dtype.kind != "b":
            raise RequestError(422, f"{where} holds true/false; the model takes {dtype.name} numbers")
        if dtype.kind == "f":
            with np.errstate(over="ignore"):
                converted = array.astype(dtype)
            if not np.all(np.isfinite(converted)):
                raise RequestError(422, f"{where} holds values beyond {dtype.name}'s range; send finite numbers "
                                        f"within +-{np.finfo(dtype).max:.3g}")
            return converted
        if dtype.kind in "iu":
            if array.dtype.kind == "f" and not np.all(array == np.floor(array)):
                raise RequestError(422, f"{where} holds fractional values; the model takes whole {dtype.name} "
                                        "numbers (" + ("pixel values 0-255" if dtype == np.uint8 else "token ids")
                                        + ")")
            low, high = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
            what = "pixel values" if dtype == np.uint8 else "values"
            if dtype.kind == "i" and self.vocab_size:  # integer inputs of a text model are token ids
                low, high, what = 0, int(self.vocab_size) - 1, "token ids"
            smallest, largest = array.min(), array.max()
            if smallest < low or largest > high:
                raise RequestError(422, f"{where} holds values from {_number(smallest)} to {_number(largest)}; "
                                        f"the model takes {what} from {low} to {high}")
            return array.astype(dtype)
        if dtype.kind == "b":
            if array.dtype.kind != "b" and not np.all((array == 0) | (array == 1)):
                raise RequestError(422, f"{where} must hold true/false (or 0/1) values")
            return array.astype(dtype)
        raise RequestError(500, f"the model takes {dtype.name} inputs, which this server cannot convert JSON to")

    def _example_request(self) -> str:
        """What a request for this model looks like, for error messages."""
        if not self.named:
            return f"{{\"inputs\": [x1, x2, ...]}}, each x a nested list shaped {list(self.shapes[None])}"
        fields = ", ".join(f"\"{k}\": [...]" for k in sorted(self.shapes))
        shapes = ", ".join(f"{k} {list(self.shapes[k])}" for k in sorted(self.shapes))
        return f"{{\"inputs\": {{{fields}}}}}, one nested list per example shaped {shapes}"

    # Outputs.

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def __call__(self, x, n: int):
        """The model's outputs for a batch of `n` checked examples, computed at its bucket's size."""
        size = self.bucket(n)
        padded = _map(lambda a: np.concatenate([a, np.zeros((size - n,) + a.shape[1:], a.dtype)]) if size > n else a,
                      x)
        if size in self._compiled:
            outputs = self.model(padded)
        else:
            with self._compile_lock:  # its first call compiles the program, once
                outputs = self.model(padded)
                self._compiled.add(size)
        return _map(lambda o: np.asarray(o)[:n], outputs)

    def warm(self, sizes) -> list[int]:
        """Compiles the buckets of the batch sizes `sizes` (zeros through the model); returns them."""
        warmed = sorted({self.bucket(min(max(int(s), 1), self.max_batch)) for s in sizes})
        for size in warmed:
            zeros = {k: np.zeros((size,) + self.shapes[k], self.dtypes[k]) for k in self.shapes}
            self(zeros if self.named else zeros[None], size)
        return warmed

    def predict(self, body: bytes) -> dict:
        x, n = self.parse(body)
        outputs = self(x, n)
        response = {"outputs": _to_json(outputs)}
        predictions = self._predictions(outputs)
        if predictions is not None:
            response["predictions"] = predictions.tolist()
            if self.class_names and len(self.class_names) == max(outputs.shape[1], 2):
                response["labels"] = [self.class_names[int(i)] for i in predictions]
        return response

    def _predictions(self, outputs) -> Optional[np.ndarray]:
        """Class indices for a classifier's logits: the argmax, or the sign of a binary classifier's one logit."""
        if self.task not in ("classification", "binary") or not isinstance(outputs, np.ndarray) or outputs.ndim != 2:
            return None
        if outputs.shape[1] == 1:
            return (outputs[:, 0] > 0).astype(np.int64)
        return np.argmax(outputs, axis=-1)

    def health(self) -> dict:
        return {"status": "ok", "format": self.meta.get("format"), "inputs": self.spec, "task": self.task,
                "max_batch": self.max_batch, "buckets": self.buckets, "warmed": sorted(self._compiled)}


def _map(fn, tree):
    import jax  # the outputs may be any pytree the model returns

    return jax.tree.map(fn, tree)


def _to_json(outputs):
    """Outputs as JSON-ready lists; a value that is not finite becomes null."""
    def convert(a):
        a = np.asarray(a)
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            return np.where(np.isfinite(a), a, None).tolist()
        return a.tolist()

    return _map(convert, outputs)


def _loads(text: str):
    """The request's JSON; NaN and Infinity, which JSON has no words for, are invalid (as orjson has them)."""
    if orjson is not None:
        return orjson.loads(text)
    return json.loads(text, parse_constant=_reject_constant)


def _reject_constant(name):
    raise ValueError(f"the body holds {name}, which is not a JSON value")


def _dumps(payload) -> bytes:
    if orjson is not None:
        return orjson.dumps(payload)
    return json.dumps(payload, allow_nan=False).encode()


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _number(x) -> str:
    return str(int(x)) if float(x).is_integer() else f"{float(x):g}"


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes requests to the server's Predictor; every answer is JSON, every failure one line of it."""

    protocol_version = "HTTP/1.1"  # keep-alive: a client's requests share one connection
    disable_nagle_algorithm = True  # the body is not held back 40 ms behind the headers (Nagle against delayed ACKs)
    timeout = REQUEST_TIMEOUT_SECONDS
    server: "Server"

    def do_GET(self):
        self._answer("GET")

    def do_POST(self):
        self._answer("POST")

    def do_PUT(self):
        self._answer("PUT")

    def do_DELETE(self):
        self._answer("DELETE")

    def do_PATCH(self):
        self._answer("PATCH")

    def do_HEAD(self):
        self._answer("HEAD")

    def _answer(self, method: str):
        path = urllib.parse.urlsplit(self.path).path
        try:
            if not (path == "/predict" and method == "POST"):
                self._discard_body()  # none is read, so the connection's next request starts clean
            if path not in ROUTES:
                raise RequestError(404, f"no such path {path}; the server answers GET /health, GET /metadata and "
                                        "POST /predict")
            allowed = ROUTES[path]
            if method != allowed and not (method == "HEAD" and allowed == "GET"):
                raise RequestError(405, f"{path} takes {allowed}, not {method}")
            if path == "/health":
                self._send(200, self.server.predictor.health(), body=method != "HEAD")
            elif path == "/metadata":
                self._send(200, self.server.predictor.meta, body=method != "HEAD")
            else:
                with self.server.tracking():
                    self._send(200, self.server.predictor.predict(self._read_body()))
        except RequestError as e:
            self._fail(e.status, str(e), method)
        except (BrokenPipeError, ConnectionResetError):  # the client left before its answer
            self.close_connection = True
        except Exception as e:  # the server's own failure: said in one line, logged in full, and serving goes on
            traceback.print_exc(file=sys.stderr)
            message = " ".join(f"{type(e).__name__}: {e}".split())
            self._fail(500, f"the server failed on this request ({message}); its log holds the traceback", method)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError(411, "chunked bodies are not supported; send a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise RequestError(411, "the request has no Content-Length; send the JSON body with its length")
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise RequestError(400, f"Content-Length {length!r} is not a number of bytes") from None
        limit = self.server.predictor.max_body_bytes
        if length > limit:
            self.close_connection = True  # its body is left unread
            raise RequestError(413, f"the body has {length} bytes, more than the {limit} a batch of --max_batch="
                                    f"{self.server.predictor.max_batch} examples needs; split the batch")
        try:
            body = self.rfile.read(length)
        except (socket.timeout, TimeoutError):
            self.close_connection = True
            raise RequestError(408, f"the body did not arrive within {self.timeout} s; send Content-Length bytes")
        if len(body) < length:
            self.close_connection = True
            raise RequestError(400, f"the body ended after {len(body)} of its Content-Length of {length} bytes")
        return body

    def _discard_body(self):
        """Reads the body of a request that is not a prediction (or closes the connection after answering)."""
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= self.server.predictor.max_body_bytes:
            try:
                if len(self.rfile.read(int(length))) == int(length):
                    return
            except (socket.timeout, TimeoutError):
                pass
            self.close_connection = True
        elif length or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True

    def _fail(self, status: int, message: str, method: str):
        self.log_message("%s %s -> %d %s", method, self.path, status, message)
        allowed = ROUTES.get(urllib.parse.urlsplit(self.path).path)
        headers = {"Allow": "GET, HEAD" if allowed == "GET" else allowed} if status == 405 else {}
        try:
            self._send(status, {"error": message}, body=method != "HEAD", headers=headers)
        except OSError:  # the client has gone
            self.close_connection = True

    def _send(self, status: int, payload: Any, body: bool = True, headers: Optional[dict] = None):
        data = _dumps(payload) + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_request(self, code="-", size="-"):  # successes go unlogged unless --log_requests
        if self.server.log_requests:
            super().log_request(code, size)


class Server(http.server.ThreadingHTTPServer):
    """A ThreadingHTTPServer that serves a Predictor and knows how many predictions are in flight."""

    daemon_threads = True  # idle keep-alive connections do not hold up a shutdown
    allow_reuse_address = True
    request_queue_size = 128  # connections waiting to be accepted (the standard library's 5 drops bursts)

    def __init__(self, predictor: Predictor, host: str = "127.0.0.1", port: int = 0, log_requests: bool = False):
        self.predictor = predictor
        self.log_requests = log_requests
        self._in_flight = 0
        self._idle = threading.Condition()
        try:
            super().__init__((host, port), Handler)
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port (0: any free "
                             "one) or --host") from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @contextlib.contextmanager
    def tracking(self):
        """Counts a prediction in flight while the block runs."""
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Waits for the predictions in flight to be answered; False if some still run after `timeout` s."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)


def define_flags(flag_values=flags.FLAGS) -> None:
    """The command line's flags (defined only when the module runs as a program, so importing it defines none)."""
    flags.DEFINE_string("model", None, "Folder written by `python -m bmjax.export` (holds export.json).",
                        flag_values=flag_values)
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on; 0.0.0.0 for every interface.",
                        flag_values=flag_values)
    flags.DEFINE_integer("port", 8000, "Port to listen on; 0 takes any free port (the log line names it).",
                         flag_values=flag_values)
    flags.DEFINE_integer("max_batch", 256, "Most examples one request may hold; larger batches get 413.",
                         flag_values=flag_values)
    flags.DEFINE_list("warmup", ["1", "8", "32"], "Batch sizes whose programs are compiled before serving (each "
                      "rounds up to its power-of-two bucket); 'all' for every bucket, 'none' for none.",
                      flag_values=flag_values)
    flags.DEFINE_bool("log_requests", False, "Log every request, not only the failed ones.", flag_values=flag_values)


def serve(server: Server) -> None:
    """Serves until SIGINT or SIGTERM, then stops taking connections and waits for the predictions in flight."""
    stop = threading.Event()

    def on_signal(signum, frame):
        server.stopped_by = signal.Signals(signum).name
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, name="bmjax-serve", daemon=True)
    thread.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()  # no new requests are accepted
        finished = server.wait_idle(SHUTDOWN_GRACE_SECONDS)
        server.server_close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    note = "" if finished else f" (predictions still running after {SHUTDOWN_GRACE_SECONDS} s were dropped)"
    print(f"stopped by {getattr(server, 'stopped_by', 'request')}{note}", file=sys.stderr, flush=True)


def start(options) -> Server:
    """Loads the export, listens, compiles the --warmup buckets; the server, ready to serve."""
    from bmjax.export import load  # JAX starts here

    warmup = [v.strip().lower() for v in options.warmup]
    if warmup not in (["all"], ["none"], []) and not all(v.isdigit() for v in warmup):
        raise UsageError(f"--warmup takes batch sizes, 'all' or 'none', got {','.join(options.warmup)}")
    started = time.perf_counter()
    predictor = Predictor(load(options.model), max_batch=options.max_batch)
    sizes = predictor.buckets if warmup == ["all"] else [] if warmup in (["none"], []) else [int(v) for v in warmup]
    server = Server(predictor, options.host, options.port, log_requests=options.log_requests)  # fails fast if taken
    warmed = predictor.warm(sizes)
    print(f"serving {options.model} on {server.url} (warmed batch sizes {warmed or 'none'} in "
          f"{time.perf_counter() - started:.1f} s; POST /predict, GET /health, GET /metadata)", flush=True)
    return server


@exit_on_usage_error
def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {' '.join(argv[1:])}; usage: python -m bmjax.serve --model=DIR "
                         "[--port=N] [--host=ADDRESS] [--max_batch=N] [--warmup=1,8,32]")
    options = flags.FLAGS
    if not options.model:
        raise UsageError("--model is required: the folder `python -m bmjax.export --out=DIR` wrote")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        server = start(options)
    except KeyboardInterrupt:
        print("interrupted before serving", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
    serve(server)


if __name__ == "__main__":
    define_flags()
    app.run(main)
