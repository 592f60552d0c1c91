"""`python -m bmjax.serve`: an exported digits classifier answering JSON over HTTP, checked against bmjax.restore."""

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn.datasets import load_digits

import bmjax
from bmjax import export, serve
from conftest import ROOT, subprocess_env

MAX_BATCH = 16
CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run folder, export folder) of a tiny digits MLP exported as StableHLO."""
    workdir = tmp_path_factory.mktemp("serve") / "run"
    bmjax.run(bmjax.Config(workdir=str(workdir), dataset="digits", model="mlp", hidden_sizes=(32,), train_steps=20,
                           batch_size=64, log_every_steps=20, parallel="single"))
    out = workdir / "export"
    export.export(bmjax.restore(str(workdir)), str(out))
    return workdir, out


@pytest.fixture(scope="module")
def digits():
    return load_digits().images.reshape(-1, 8, 8, 1).astype(np.float32)[:64]


@pytest.fixture(scope="module")
def reference(trained, digits):
    """bmjax's own outputs for digits[start:start + n], computed as the server does: on the batch padded with
    zero rows to its bucket (XLA's CPU kernels may round a row differently at another batch size)."""
    restored = bmjax.restore(str(trained[0]))

    def outputs(start, n):
        size = serve.buckets(MAX_BATCH)[int(np.ceil(np.log2(n)))]
        batch = np.concatenate([digits[start:start + n], np.zeros((size - n, 8, 8, 1), np.float32)])
        return np.asarray(restored(batch))[:n]

    return outputs


@pytest.fixture(scope="module")
def server(trained):
    """The server in a thread of this process, on a free port."""
    predictor = serve.Predictor(export.load(str(trained[1])), max_batch=MAX_BATCH)
    predictor.warm([1, 4])
    httpd = serve.Server(predictor, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def request(url, method, path, body=None, connection=None):
    """(status, decoded JSON) of one request; `body` may be bytes or any JSON value."""
    conn = connection or http.client.HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=30)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    response = conn.getresponse()
    payload = json.loads(response.read())
    if connection is None:
        conn.close()
    return response.status, payload


def raw_request(url, text: bytes) -> tuple[int, dict]:
    """A hand-written HTTP request (for what http.client would not send), answered on a closed connection."""
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(text)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_buckets_are_powers_of_two_up_to_the_largest_batch():
    assert serve.buckets(1) == [1]
    assert serve.buckets(16) == [1, 2, 4, 8, 16]
    assert serve.buckets(10) == [1, 2, 4, 8, 10]


def test_health_and_metadata(server, trained):
    status, health = request(server.url, "GET", "/health")
    assert status == 200
    assert health["status"] == "ok" and health["format"] == "stablehlo" and health["task"] == "classification"
    assert health["inputs"] == {"shape": [8, 8, 1], "dtype": "float32"}
    assert health["max_batch"] == MAX_BATCH and {1, 4} <= set(health["warmed"])
    status, metadata = request(server.url, "GET", "/metadata")
    assert status == 200 and metadata == json.loads((trained[1] / "export.json").read_text())
    assert metadata["classes"] == CLASSES


def test_predictions_equal_bmjax_restore(server, digits, reference):
    for n in (1, 5, MAX_BATCH):  # 5 is padded to 8; 16 is the largest bucket
        status, answer = request(server.url, "POST", "/predict", {"inputs": digits[:n].tolist()})
        assert status == 200, answer
        outputs = np.asarray(answer["outputs"])
        assert outputs.shape == (n, 10)
        np.testing.assert_allclose(outputs, reference(0, n), atol=1e-6, rtol=0)
        assert answer["predictions"] == np.argmax(reference(0, n), axis=-1).tolist()
        assert answer["labels"] == [CLASSES[i] for i in answer["predictions"]]
    status, health = request(server.url, "GET", "/health")
    assert {8, 16} <= set(health["warmed"]) and not {5} & set(health["warmed"])  # bucket sizes only


def test_concurrent_requests_are_each_answered_correctly(server, digits, reference):
    starts = [(i * 3) % 60 for i in range(24)]

    def ask(i):
        start, n = starts[i], i % 4 + 1
        status, answer = request(server.url, "POST", "/predict", {"inputs": digits[start:start + n].tolist()})
        return status, np.asarray(answer["outputs"]), reference(start, n)

    with ThreadPoolExecutor(8) as pool:
        for status, outputs, expected in pool.map(ask, range(len(starts))):
            assert status == 200
            np.testing.assert_allclose(outputs, expected, atol=1e-6, rtol=0)


BAD_REQUESTS = [
    # (method, path, body, status, words the one-line message holds)
    ("POST", "/predict", b'{"inputs": [[1, 2', 400, "not valid JSON"),
    ("POST", "/predict", b"\xff\xfe", 400, "not UTF-8"),
    ("POST", "/predict", {"input": [[1]]}, 400, 'an "inputs" field'),
    ("POST", "/predict", [1, 2], 400, 'an "inputs" field'),
    ("POST", "/predict", {"inputs": [[1]], "extra": 1}, 400, "unknown field(s) 'extra'"),
    ("POST", "/predict", b'{"inputs": [NaN]}', 400, "not valid JSON" if serve.orjson else "NaN"),
    ("POST", "/predict", {"inputs": {"x": [[1]]}}, 400, "one unnamed input"),
    ("POST", "/predict", {"inputs": 3}, 400, "must be a list of examples"),
    ("POST", "/predict", {"inputs": [[0.0] * 64]}, 422, "shaped [64], but the model takes examples shaped [8, 8, 1]"),
    ("POST", "/predict", {"inputs": np.zeros((8, 8, 1)).tolist()}, 422, "for one example, send a list holding it"),
    ("POST", "/predict", {"inputs": [[[[1.0]] * 8] * 8, [[1.0]]]}, 422, "ragged"),
    ("POST", "/predict", {"inputs": [[[["a"]] * 8] * 8]}, 422, "not numbers"),
    ("POST", "/predict", {"inputs": [[[[True]] * 8] * 8]}, 422, "true/false"),
    ("POST", "/predict", {"inputs": [[[[1e39]] * 8] * 8]}, 422, "beyond float32's range"),
    ("POST", "/predict", {"inputs": []}, 422, "empty batch"),
    ("POST", "/predict", {"inputs": np.zeros((MAX_BATCH + 1, 8, 8, 1)).tolist()}, 413, "more than this server's "
                                                                                         "--max_batch of 16"),
    ("GET", "/nowhere", None, 404, "no such path /nowhere"),
    ("POST", "/nowhere", {"inputs": []}, 404, "no such path"),
    ("GET", "/predict", None, 405, "/predict takes POST, not GET"),
    ("POST", "/health", {"inputs": []}, 405, "/health takes GET, not POST"),
    ("DELETE", "/metadata", None, 405, "takes GET"),
]


@pytest.mark.parametrize("method,path,body,status,words", BAD_REQUESTS, ids=[f"{c[3]}-{c[4][:24]}" for c in
                                                                             BAD_REQUESTS])
def test_bad_requests_get_a_one_line_error(server, method, path, body, status, words):
    got, answer = request(server.url, method, path, body)
    assert got == status, answer
    assert list(answer) == ["error"] and "\n" not in answer["error"]
    assert words in answer["error"]


def test_one_connection_carries_requests_past_errors(server, digits, reference):
    """Keep-alive: an error's unread body does not spoil the connection's next request."""
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(server.url).netloc, timeout=30)
    assert request(server.url, "POST", "/nowhere", {"inputs": [1] * 1000}, connection=conn)[0] == 404
    assert request(server.url, "POST", "/predict", {"inputs": []}, connection=conn)[0] == 422
    status, answer = request(server.url, "POST", "/predict", {"inputs": digits[:2].tolist()}, connection=conn)
    assert status == 200
    np.testing.assert_allclose(answer["outputs"], reference(0, 2), atol=1e-6, rtol=0)
    conn.close()


def test_requests_http_client_would_not_send(server):
    status, answer = raw_request(server.url, b"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 411 and "Content-Length" in answer["error"]
    status, answer = raw_request(server.url, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
    assert status == 413 and "split the batch" in answer["error"]
    assert request(server.url, "GET", "/health")[0] == 200


class _FailingModel:
    """A model whose every call fails, as a broken export would."""

    inputs = {"shape": [2], "dtype": "float32"}
    meta = {"format": "stablehlo", "task": "regression"}

    def __call__(self, x):
        raise RuntimeError("device memory exhausted\nsecond line")


def test_a_failing_model_answers_500_and_the_server_keeps_serving():
    httpd = serve.Server(serve.Predictor(_FailingModel(), max_batch=4), "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        status, answer = request(httpd.url, "POST", "/predict", {"inputs": [[1.0, 2.0]]})
        assert status == 500 and "RuntimeError: device memory exhausted second line" in answer["error"]
        assert request(httpd.url, "GET", "/health")[0] == 200
    finally:
        httpd.shutdown()
        httpd.server_close()


class _Spec:
    """Just what input checking reads of an export: its input spec and metadata (no program is called)."""

    def __init__(self, inputs, **meta):
        self.inputs, self.meta = inputs, meta


def _error(predictor, body) -> tuple[int, str]:
    with pytest.raises(serve.RequestError) as caught:
        predictor.parse(json.dumps(body).encode())
    return caught.value.status, str(caught.value)


def test_pixels_and_token_ids_are_range_checked():
    images = serve.Predictor(_Spec({"shape": [2], "dtype": "uint8"}))
    x, n = images.parse(b'{"inputs": [[0, 255], [7.0, 8]]}')
    assert n == 2 and x.dtype == np.uint8 and x.tolist() == [[0, 255], [7, 8]]
    assert _error(images, {"inputs": [[0, 256]]}) == (422, '"inputs" holds values from 0 to 256; the model takes '
                                                          'pixel values from 0 to 255')
    assert _error(images, {"inputs": [[-1, 3]]})[0] == 422
    assert "fractional" in _error(images, {"inputs": [[0.5, 3]]})[1]

    text = serve.Predictor(_Spec({"ids": {"shape": [3], "dtype": "int32"}, "mask": {"shape": [3], "dtype": "bool"}},
                                 vocab_size=100))
    x, n = text.parse(b'{"inputs": {"ids": [[1, 2, 99]], "mask": [[true, true, false]]}}')
    assert n == 1 and x["ids"].dtype == np.int32 and x["mask"].tolist() == [[True, True, False]]
    assert "token ids from 0 to 99" in _error(text, {"inputs": {"ids": [[1, 2, 100]], "mask": [[1, 1, 1]]}})[1]
    assert _error(text, {"inputs": {"ids": [[1, 2, 3]]}}) == (400, '"inputs" lacks mask; the model takes ids, mask')
    assert "different numbers of examples" in _error(text, {"inputs": {"ids": [[1, 2, 3]] * 2,
                                                                       "mask": [[1, 1, 1]]}})[1]
    assert "named inputs (ids, mask)" in _error(text, {"inputs": [[1, 2, 3]]})[1]


def test_command_line_serves_then_stops_cleanly_on_sigterm(trained, digits, reference):
    process = subprocess.Popen([sys.executable, "-m", "bmjax.serve", f"--model={trained[1]}", "--port=0",
                                "--warmup=2"], cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(120, process.kill)  # a server that never comes up fails the test, not the suite
    timer.start()
    try:
        line = process.stdout.readline()
        assert line.startswith("serving "), process.stderr.read()
        assert "warmed batch sizes [2]" in line
        url = line.split(" on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        status, answer = request(url, "POST", "/predict", {"inputs": digits[:2].tolist()})
        assert status == 200
        np.testing.assert_allclose(answer["outputs"], reference(0, 2), atol=1e-6, rtol=0)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert "stopped by SIGTERM" in process.stderr.read()
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_usage_errors(server):
    with pytest.raises(bmjax.UsageError, match=r"cannot listen on 127.0.0.1:\d+ .*choose another --port"):
        serve.Server(server.predictor, "127.0.0.1", server.server_address[1])
    with pytest.raises(bmjax.UsageError, match="--max_batch must be at least 1, got 0"):
        serve.Predictor(server.predictor.model, max_batch=0)


@pytest.mark.parametrize("library", ["orjson", "json"])
def test_requests_read_alike_with_either_json_library(monkeypatch, library):
    if library == "json":
        monkeypatch.setattr(serve, "orjson", None)
    elif serve.orjson is None:
        pytest.skip("orjson is not installed (pip install orjson); the standard library's json reads requests")
    predictor = serve.Predictor(_Spec({"shape": [2], "dtype": "float32"}))
    x, n = predictor.parse(b'{"inputs": [[0.5, -1e3], [2, 3]]}')
    assert n == 2 and x.dtype == np.float32 and x.tolist() == [[0.5, -1000.0], [2.0, 3.0]]
    for body, words in [(b'{"inputs": [[1, 2]', "not valid JSON (unexpected end of data" if library == "orjson"
                         else "not valid JSON (Expecting ',' delimiter"),
                        (b'{"inputs": [[NaN, 1]]}', "not valid JSON" if library == "orjson" else "NaN")]:
        with pytest.raises(serve.RequestError, match=re.escape(words)) as caught:
            predictor.parse(body)
        assert caught.value.status == 400
    assert json.loads(serve._dumps({"outputs": [[1.5, None]]})) == {"outputs": [[1.5, None]]}


def test_command_line_says_what_is_missing():
    process = subprocess.run([sys.executable, "-m", "bmjax.serve", "--warmup=1,8"], cwd=ROOT, env=subprocess_env(),
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines()[-1] == ("error: --model is required: the folder `python -m "
                                                        "bmjax.export --out=DIR` wrote")
