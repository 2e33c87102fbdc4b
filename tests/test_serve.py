"""Serve a run's model (``flows/serve.py``): the command line (``--help``, bad arguments one
line and exit status 2 before TensorFlow starts), the server in a process of its own on a free
port (every endpoint; 100 test images through ``POST /predict`` give the model's own
predictions; 1000 inputs fit the default body bound; every bad input a 4xx with one line, the
server still answering and nothing written; Ctrl-C), a table model and an image-folder model
served from a thread, and the page's MNIST-style preprocessing of a drawing. On tiny synthetic
models trained here and exported as a run exports them; the browser test (headless Chromium
driven by Selenium) is marked ``slow``."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_ROOT, synthetic_mnist, write_npz
from test_predict import animals

pytestmark = pytest.mark.xdist_group("serve")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
def photos(folder: Path) -> Path:
    """Three classes of 8x6 RGB photos, one colour each."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in (("blue", (20, 40, 200)), ("green", (30, 180, 40)),
                         ("red", (210, 30, 30))):
        (folder / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(np.array(colour) + rng.integers(-40, 40, (6, 8, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(folder / name / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """Three tiny trained and exported models, each in a report folder: digits (28x28 uint8
    npz, MNIST-like), animals (a CSV table) and photos (a folder of 8x6 RGB images)."""
    from tasks.config import TrialConfig
    from tasks.data.prepare import prepare_data
    from tasks.export.exporter import Selection, export_model
    from tasks.trial.task import train_trial

    root = tmp_path_factory.mktemp("serve")
    arrays = synthetic_mnist(n_train=400, n_test=200, seed=3)
    digits = write_npz(root / "digits.npz", arrays)
    table = root / "animals.csv"
    animals(240, 0).to_csv(table, index=False)
    reports, data_dir = root / "reports", root / "data"
    models = {}
    for key, source, folder, config in (
            ("digits", digits, "grid-20250101-000001-aaaa",
             TrialConfig(units=32, epochs=3, batch_size=50)),
            ("animals", table, "random-search-20250101-000002-bbbb",
             TrialConfig(units=16, epochs=3, batch_size=20, learning_rate=0.01)),
            ("photos", photos(root / "photos"), "baseline-20250101-000003-cccc",
             TrialConfig(units=8, epochs=3, batch_size=10))):
        handle, _ = prepare_data(str(source), None, data_dir)
        result = train_trial(config.model_copy(update={"dropout": 0.0}), handle, "compiled",
                             str(data_dir))
        export_model(result, handle, reports / folder / "model", Selection("grid", 1))
        models[key] = reports / folder
    return {"root": root, "x_test": arrays["x_test"], "table": table, "reports": reports,
            "models": models}


def model_of(made, name):
    from tasks.predict.model import find_model

    return find_model(str(made["models"][name]))


def png_b64(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def keras_probabilities(made, name: str, x: np.ndarray) -> np.ndarray:
    """The model's own answer: ``keras.saving.load_model`` on the raw input, nothing of this
    project in between."""
    import keras

    model = keras.saving.load_model(made["models"][name] / "model" / "model.keras")
    return np.asarray(model.predict(x, verbose=0), np.float64)


def files_under(*folders: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for folder in folders for p in folder.rglob("*")}


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------
def run_serve(*argv: str, env: dict | None = None, timeout: float = 60):
    return subprocess.run([sys.executable, "flows/serve.py", *argv], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=env or os.environ.copy())


def test_help_explains_it_and_says_it_is_no_prefect_flow():
    done = run_serve("--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for words in ("not a Prefect flow", "POST /predict", '{"instances": [...]}', "GET /model",
                  "GET /health", "--max-body", "--host", "--port", "latest", "draw",
                  "exit status"):
        assert words in text, words


def test_bad_arguments_are_one_line_exit_2_before_tensorflow_starts(made):
    """Each bad argument: ``error: <one line>``, status 2, and TensorFlow (and Prefect) never
    imported: the checks run before the model is loaded."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    digits = str(made["models"]["digits"])
    cases = {
        "--port 70000": ["--model", digits, "--port", "70000"],
        "--port abc": ["--model", digits, "--port", "abc"],
        "--max-body 10": ["--model", digits, "--max-body", "10"],
        "unknown option": ["--model", digits, "--colour", "red"],
        "no model there": ["--model", str(made["root"] / "nowhere")],
        "a folder without one": ["--model", str(made["root"])],
        "no latest": ["--model", "latest", "--reports-dir", str(made["root"] / "empty")],
        "port in use": ["--model", digits, "--port", str(port)],
        "host not here": ["--model", digits, "--host", "192.0.2.1"],
    }
    script = ("import json, sys\n"
              "from flows.serve import main\n"
              "from tasks.serve.server import run_command\n"
              "codes = [run_command(main, argv) for argv in json.loads(sys.argv[1])]\n"
              "print(json.dumps({'codes': codes, 'loaded': sorted(m for m in ('tensorflow', "
              "'keras', 'prefect', 'uvicorn') if m in sys.modules)}))\n")
    try:
        done = subprocess.run([sys.executable, "-c", script, json.dumps(list(cases.values()))],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    finally:
        busy.close()
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    lines = done.stderr.strip().splitlines()
    assert outcome["codes"] == [2] * len(cases), list(zip(cases, outcome["codes"], strict=False))
    assert outcome["loaded"] == [], outcome["loaded"]
    assert len(lines) == len(cases), lines
    assert all(line.startswith("error: ") for line in lines), lines
    said = dict(zip(cases, lines, strict=True))
    assert "must be 0 (a free port) to 65535" in said["--port 70000"]
    assert "invalid int value: 'abc'" in said["--port abc"]
    assert "at least 1024" in said["--max-body 10"]
    assert "--colour" in said["unknown option"]
    assert "not found" in said["no model there"]
    assert "no model.keras" in said["a folder without one"]
    assert "no report folder with a model/" in said["no latest"]
    assert f"--port {port}: already in use" in said["port in use"]
    assert "--host 192.0.2.1" in said["host not here"]


# --------------------------------------------------------------------------------------------
# The server, in a process of its own
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(made, tmp_path_factory):
    """``python flows/serve.py --model <digits>`` on a free port, run from an empty folder
    with a Prefect home of its own; yields its address, its process and those folders. At the
    end it is stopped with Ctrl-C (SIGINT): exit status 130, and nothing on its terminal but
    its address lines and ``stopped``: no traceback, whatever it was sent."""
    home = tmp_path_factory.mktemp("serve-home")
    workdir = tmp_path_factory.mktemp("serve-cwd")
    env = os.environ | {"PREFECT_HOME": str(home), "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "flows" / "serve.py"),
                                "--model", str(made["models"]["digits"])], cwd=workdir,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    first = process.stdout.readline()
    second = process.stdout.readline()
    found = re.search(r" at (http://127\.0\.0\.1:\d+/)$", first.strip())
    if not found:
        process.kill()
        pytest.fail(f"no address: {first!r} {second!r} {process.stderr.read()[-2000:]}")
    yield {"url": found.group(1), "process": process, "lines": [first, second], "home": home,
           "cwd": workdir}
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # pragma: no cover (a hung server)
        process.kill()
        raise
    assert process.returncode == 130, (process.returncode, err[-2000:])
    assert err.strip() == "stopped", err[-3000:]
    assert out.strip() == "", out[-2000:]


@pytest.fixture(scope="module")
def client(server):
    import httpx

    with httpx.Client(base_url=server["url"], timeout=60) as http:
        yield http


def test_it_prints_its_address_and_api_and_answers_every_endpoint(server, client, made):
    first, second = server["lines"]
    assert first.startswith("Serving digits") and "28x28 uint8 images, 10 classes" in first
    assert "POST " in second and "predict" in second and "Ctrl-C stops" in second
    assert "up to 4,096,000 bytes a request" in second
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() | {"model": "", "model_key": ""} == {
        "status": "ok", "model": "", "model_key": "", "takes": "28x28 uint8 images",
        "classes": 10, "max_body": 4_096_000}
    record = (made["models"]["digits"] / "model" / "model.json").read_bytes()
    answer = client.get("/model")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.content == record
    assert health.json()["model_key"] == json.loads(record)["model_key"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<canvas id="canvas"' in html and 'id="file"' in html and 'id="bars"' in html
    config = json.loads(re.search(r'<script id="config" type="application/json">(.*?)</script>',
                                  html, re.S).group(1))
    assert config["drawable"] is True and config["classes"] == [str(d) for d in range(10)]
    assert config["record"]["model_key"] == json.loads(record)["model_key"]
    # self-contained: nothing is fetched from another machine
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "external resource"
    assert "@import" not in html and "url(http" not in html


def test_100_test_images_give_the_models_own_predictions(client, made):
    """100 test images through POST /predict, as nested lists and as PNG files (b64): the
    answer is keras.saving.load_model's on the same raw input."""
    x = made["x_test"][:100]
    answer = client.post("/predict", json={"instances": x.tolist()})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"predictions", "class_names"}
    assert body["class_names"] == [str(d) for d in range(10)]
    served = np.asarray(body["predictions"])
    expected = keras_probabilities(made, "digits", x)
    assert served.shape == (100, 10)
    assert int((served.argmax(axis=1) == expected.argmax(axis=1)).sum()) == 100
    np.testing.assert_allclose(served, expected, atol=1e-6)
    np.testing.assert_allclose(served.sum(axis=1), 1, atol=1e-5)
    files = client.post("/predict", json={"instances": [{"b64": png_b64(a)} for a in x]})
    assert files.status_code == 200, files.text
    np.testing.assert_array_equal(np.asarray(files.json()["predictions"]), served)
    mixed = client.post("/predict", json={"instances": [x[0].tolist(), {"b64": png_b64(x[1])},
                                                        x[2].tolist()]})
    np.testing.assert_array_equal(np.asarray(mixed.json()["predictions"]), served[:3])


def test_1000_inputs_fit_the_default_body_bound(client):
    """The default ``--max-body`` holds 1000 of the model's inputs at their widest JSON (every
    pixel 255, Python's separators); a byte over the bound is refused."""
    body = json.dumps({"instances": np.full((1000, 28, 28), 255).tolist()}).encode()
    assert len(body) <= 4_096_000
    answer = client.post("/predict", content=body)
    assert answer.status_code == 200, answer.text[:300]
    assert len(answer.json()["predictions"]) == 1000
    over = client.post("/predict", content=b" " * 4_096_001)
    assert over.status_code == 413
    assert over.json() == {"error": "the body is 4,096,001 bytes, over this server's bound of "
                                    "4,096,000 bytes (--max-body)"}


def bad_inputs(x: np.ndarray) -> dict[str, tuple[dict, int, str]]:
    """name -> (request, status, words its line must hold)."""
    image = x[0].tolist()
    chunked = (b" " * 65536 for _ in range(70))  # no Content-Length: read up to the bound
    return {
        "a wrong shape": ({"json": {"instances": [x[0, :27].tolist()]}}, 400,
                          "instances[0]: a 27x28 image; the model takes 28x28 uint8 images"),
        "a flat row": ({"json": {"instances": [x[0].ravel().tolist()]}}, 400,
                       "a row of 784 values"),
        "a second instance of another shape": (
            {"json": {"instances": [image, x[0, :, :20].tolist()]}}, 400,
            "instances[1]: a 28x20 image"),
        "a non-numeric value": ({"json": {"instances": [image[:27] + [["a"] * 28]]}}, 400,
                                "instances[0]: a non-numeric value ('a')"),
        "null": ({"json": {"instances": [None]}}, 400, "a non-numeric value (null)"),
        "pixels over 255": ({"json": {"instances": [image, (x[1].astype(int) + 300).tolist()]}},
                            400, "instances[1]: the instance holds values in"),
        "fractions for 8-bit pixels": ({"json": {"instances": [(x[0] / 2).tolist()]}}, 400,
                                       "float64 values"),
        "ragged lists": ({"json": {"instances": [[[1, 2], [3]]]}}, 400,
                         "nested lists of unequal lengths"),
        "not JSON": ({"content": b"{nope"}, 400, "the body is not JSON"),
        "not UTF-8": ({"content": b"\xff\xfe\xfa"}, 400, "the body is not JSON"),
        "nested too deeply": ({"content": b"[" * 100_000}, 400, "nested too deeply"),
        "no instances": ({"json": {"images": []}}, 400, '{"instances": [instance, ...]}'),
        "instances not a list": ({"json": {"instances": "x"}}, 400, "not a list"),
        "empty instances": ({"json": {"instances": []}}, 400, "is empty"),
        "an undecodable image": (
            {"json": {"instances": [{"b64": base64.b64encode(b"GIF89a broken").decode()}]}},
            400, "instances[0]: b64 holds no image file that can be read"),
        "not base64": ({"json": {"instances": [{"b64": "%%% not base64"}]}}, 400,
                       "b64 is not base64"),
        "another object": ({"json": {"instances": [{"bytes": "AAAA"}]}}, 400,
                           'an object instance is {"b64"'),
        "a decompression bomb": ({"json": {"instances": [{"b64": bomb()}]}}, 400,
                                 "over the 40 million pixels"),
        "an oversized body": ({"content": b" " * 5_000_000}, 413,
                              "over this server's bound of 4,096,000 bytes (--max-body)"),
        "an oversized body without a length": ({"content": chunked}, 413,
                                               "over this server's bound of 4,096,000 bytes"),
        "a blank drawing": ({"json": {"instances": [np.zeros((50, 50), int).tolist()]},
                             "path": "/drawing"}, 400, "no ink: the drawing is empty"),
        "an unknown path": ({"method": "GET", "path": "/predictions"}, 404,
                            "GET /predictions: no such page or endpoint"),
        "another method": ({"method": "GET", "path": "/predict"}, 405,
                           "GET /predict: method not allowed"),
    }


def bomb() -> str:
    """A small PNG of a 10000x5000 image (50 million pixels, a few kB)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (10000, 5000)).save(buffer, "PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


def test_every_bad_input_is_a_4xx_with_one_line_and_the_server_keeps_serving(server, client,
                                                                             made):
    watched = (made["models"]["digits"], made["reports"], server["cwd"], server["home"])
    before = files_under(*watched)
    for name, (request, status, words) in bad_inputs(made["x_test"]).items():
        request = dict(request)
        method, path = request.pop("method", "POST"), request.pop("path", "/predict")
        answer = client.request(method, path, **request)
        assert answer.status_code == status, (name, answer.status_code, answer.text[:300])
        body = answer.json()
        assert list(body) == ["error"], (name, body)
        line = body["error"]
        assert words in line and "\n" not in line and "Traceback" not in line, (name, line)
        assert len(line) < 300, (name, line)
        assert client.get("/health").status_code == 200, name
    ok = client.post("/predict", json={"instances": made["x_test"][:2].tolist()})
    assert ok.status_code == 200
    assert files_under(*watched) == before  # nothing written, not even the server's log


def test_the_drawing_endpoint_makes_an_mnist_digit_and_predicts_it(client):
    canvas = np.zeros((280, 280), np.uint8)
    canvas[40:230, 150:168] = 255  # a "1", off-centre
    answer = client.post("/drawing", json={"instances": [{"b64": png_b64(canvas)}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    digit = np.asarray(body["inputs"][0])
    assert digit.shape == (28, 28)
    np.testing.assert_array_equal(digit, mnist_style_of(canvas))
    again = client.post("/predict", json={"instances": [digit.tolist()]}).json()
    np.testing.assert_array_equal(body["predictions"], again["predictions"])


def mnist_style_of(canvas):
    from tasks.serve.drawing import mnist_style

    return mnist_style(canvas)


# --------------------------------------------------------------------------------------------
# A table model and an image-folder model, served from a thread of this process
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def app_client(made, name: str, predict=None, log: Path | None = None):
    """The model's application served by uvicorn in a thread of this process, on a free port
    (``predict``: instead of the model; ``log``: the server's log file): (the model, an HTTP
    client of it)."""
    import httpx
    import uvicorn

    from tasks.serve.app import make_app
    from tasks.serve.instances import default_max_body
    from tasks.serve.server import LOGGERS, bind, load_network, quiet_logs

    model = model_of(made, name)
    if predict is None:
        _, predict = load_network(model)
    if log is not None:
        quiet_logs(log)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(make_app(model, predict, default_max_body(model)),
                                           log_config=None, access_log=False,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
                          timeout=60) as http:
            yield model, http
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        for name in LOGGERS if log is not None else ():
            for handler in list(logging.getLogger(name).handlers):
                logging.getLogger(name).removeHandler(handler)
                handler.close()


def csv_b64(frame: pd.DataFrame) -> str:
    return base64.b64encode(frame.to_csv(index=False).encode()).decode()


def test_a_table_model_takes_rows_and_csv_files_checked_as_predict_checks_them(made):
    with app_client(made, "animals") as (model, http):
        check_the_table_model(made, model, http)


def check_the_table_model(made, model, http):
    from tasks.predict.inputs import read_for_model
    from tasks.predict.model import predict

    rows = animals(20, 7)
    features = rows[["size", "weight", "legs"]].to_numpy("float64")
    answer = http.post("/predict", json={"instances": features.tolist()})
    assert answer.status_code == 200, answer.text
    assert answer.json()["class_names"] == ["bird", "cat", "dog"]
    served = np.asarray(answer.json()["predictions"])
    path = made["root"] / "rows.csv"
    rows.to_csv(path, index=False)
    expected = predict(model, read_for_model(model, path).x)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-12)
    as_file = http.post("/predict", json={"instances": [{"b64": csv_b64(rows)}]})
    assert as_file.status_code == 200, as_file.text
    np.testing.assert_array_equal(np.asarray(as_file.json()["predictions"]), served)
    headerless = base64.b64encode(b"12.5,-1.5,3\n20,-1,4\n").decode()
    answer = http.post("/predict", json={"instances": [{"b64": headerless}]})
    assert answer.status_code == 200, answer.text
    np.testing.assert_array_equal(answer.json()["predictions"], http.post(
        "/predict", json={"instances": [[12.5, -1.5, 3], [20, -1, 4]]}).json()["predictions"])
    page = http.get("/").text
    assert 'id="row-entry"' in page and '"drawable": false' in page
    bad = {
        "one value per instance": ({"instances": [1.0, 2.0, 3.0]}, "one value; the model takes "
                                   "rows of 3 feature columns (size, weight, legs) (each "
                                   "instance is one row"),
        "a short row": ({"instances": [[1.0, 2.0]]}, "instances[0]: a row of 2 values"),
        "a word": ({"instances": [[1.0, "heavy", 3]]}, "a non-numeric value ('heavy')"),
        "NaN": ({"instances": [[1.0, float("nan"), 3]]}, "NaN or infinite values in the feature "
                                                         "column(s) weight"),
        "a missing column": ({"instances": [{"b64": csv_b64(rows.drop(columns="legs"))}]},
                             "instances[0]: missing feature column(s) legs"),
        "an image": ({"instances": [{"b64": png_b64(made["x_test"][0])}]},
                     "instances[0]: an image file; the model takes rows of 3"),
        "not a table": ({"instances": [{"b64": base64.b64encode(b"\x00\x01\x02").decode()}]},
                        "instances[0]: "),
    }
    for name, (body, words) in bad.items():
        answer = http.post("/predict", content=json.dumps(body))
        assert answer.status_code == 400, (name, answer.text)
        assert words in answer.json()["error"], (name, answer.json())
    drawing = http.post("/drawing", json={"instances": [[[0, 255], [255, 0]]]})
    assert drawing.status_code == 404
    assert "takes no drawings" in drawing.json()["error"]


def test_an_image_folder_model_converts_uploads_as_predict_does(made):
    """A photo of another size and mode, as b64: converted as the model's training images
    (before_model: RGB, 8x6, bilinear), exactly as flows/predict.py reads the same file."""
    with app_client(made, "photos") as (model, http):
        check_the_photo_model(made, model, http)


def check_the_photo_model(made, model, http):
    from PIL import Image

    from tasks.predict.inputs import read_for_model
    from tasks.predict.model import predict

    assert model.before_model["convert"] == "RGB"
    rng = np.random.default_rng(5)
    photo = Image.fromarray(rng.integers(0, 255, (30, 41, 4), dtype=np.uint8), "RGBA")
    path = made["root"] / "upload.png"
    photo.save(path)
    b64 = base64.b64encode(path.read_bytes()).decode()
    answer = http.post("/predict", json={"instances": [{"b64": b64},
                                                       {"b64": "data:image/png;base64," + b64}]})
    assert answer.status_code == 200, answer.text
    expected = predict(model, read_for_model(model, path).x)
    np.testing.assert_array_equal(np.asarray(answer.json()["predictions"]),
                                  np.concatenate([expected, expected]))
    raw = http.post("/predict", json={"instances": [np.zeros((6, 8), int).tolist()]})
    assert raw.status_code == 400
    assert raw.json() == {"error": "instances[0]: a 6x8 image; the model takes 6x8x3 uint8 "
                                   "images"}
    assert '"drawable": false' in http.get("/").text  # RGB: no canvas


def test_an_unexpected_error_is_a_500_with_one_line_and_its_traceback_only_in_the_log(
        made, tmp_path, capfd):
    def broken(x):
        raise RuntimeError("the model broke\non two lines")

    log = tmp_path / "logs" / "serve.log"
    with app_client(made, "digits", predict=broken, log=log) as (_, http):
        for _ in range(2):
            answer = http.post("/predict", json={"instances": made["x_test"][:1].tolist()})
            assert answer.status_code == 500
            assert answer.json() == {"error": "internal error (RuntimeError: the model broke); "
                                              "the server keeps serving, the details are in "
                                              "its log"}
        assert http.get("/health").status_code == 200
    text = log.read_text()
    assert text.count("Traceback") == 2 and "the model broke" in text
    terminal = capfd.readouterr()
    assert "Traceback" not in terminal.out + terminal.err
    assert "the model broke" not in terminal.out + terminal.err


# --------------------------------------------------------------------------------------------
# The page's preprocessing: a drawing made into an MNIST digit
# --------------------------------------------------------------------------------------------
def stroke(size=(280, 280), points=((60, 200), (120, 40), (150, 60), (130, 230)), width=20):
    """A white polyline on black, drawn anti-aliased (4x supersampled) like a canvas."""
    from PIL import Image, ImageDraw

    scale = 4
    image = Image.new("L", (size[1] * scale, size[0] * scale))
    ImageDraw.Draw(image).line([(x * scale, y * scale) for x, y in points], fill=255,
                               width=width * scale, joint="curve")
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BOX))


def ink_box(image: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(image.any(axis=1))
    cols = np.flatnonzero(image.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_a_stroke_is_scaled_into_20x20_and_centred_by_its_centre_of_mass():
    from tasks.serve.drawing import centre_of_mass, mnist_style

    drawing = stroke()
    height, width = ink_box(drawing)
    assert height > width  # a tall stroke: its height becomes 20
    digit = mnist_style(drawing)
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    box = ink_box(digit)
    assert box[0] == 20
    assert abs(box[1] - round(20 * width / height)) <= 1  # the aspect ratio kept
    row, col = centre_of_mass(digit)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5, (row, col)
    assert digit.max() == 255
    # where it was drawn does not matter
    moved = np.zeros((400, 500), np.uint8)
    moved[90:370, 170:450] = drawing
    np.testing.assert_array_equal(mnist_style(moved), digit)
    # a wide stroke: its width becomes 20
    wide = mnist_style(stroke(points=((20, 100), (260, 140)), width=16))
    assert ink_box(wide)[1] == 20 and ink_box(wide)[0] < 10
    # another input size: the same proportions
    big = mnist_style(drawing, (64, 64))
    assert big.shape == (64, 64) and ink_box(big)[0] == round(64 * 20 / 28)
    assert all(abs(c - 32) <= 0.5 for c in centre_of_mass(big))
    assert mnist_style(np.zeros((280, 280), np.uint8)) is None


def test_an_mnist_digit_drawn_ten_times_larger_comes_back_as_itself():
    """A digit made as MNIST's are (ink 20 pixels tall, centre of mass at (14, 14) to the
    pixel), drawn 10 times larger anywhere on a canvas: the preprocessing gives it back, pixel
    for pixel (the real MNIST's test digits do the same, 500 of 500)."""
    from PIL import Image

    from tasks.serve.drawing import centre_of_mass, mnist_style

    small = stroke(size=(20, 13), points=((2, 0), (11, 4), (3, 19)), width=2)
    assert ink_box(small)[0] == 20
    row, col = centre_of_mass(small)
    digit = np.zeros((28, 28), np.uint8)
    top, left = int(np.floor(14 - row + 0.5)), int(np.floor(14 - col + 0.5))
    digit[top:top + 20, left:left + small.shape[1]] = small
    large = np.asarray(Image.fromarray(digit).resize((280, 280), Image.Resampling.NEAREST))
    canvas = np.zeros((360, 330), np.uint8)
    canvas[50:330, 30:310] = large
    np.testing.assert_array_equal(mnist_style(canvas), digit)


def test_real_mnist_digits_drawn_ten_times_larger_come_back_as_themselves(real_mnist):
    from PIL import Image

    from tasks.serve.drawing import mnist_style

    x = np.load(real_mnist)["x_test"][:500]
    same = sum(np.array_equal(mnist_style(np.asarray(
        Image.fromarray(a).resize((280, 280), Image.Resampling.NEAREST))), a) for a in x)
    assert same == 500, same


def test_serve_stays_in_its_layer():
    """The serve package stands on predict and the data readers: it imports neither Prefect
    nor the search, the trials or the reports (directly), and the command line's checks and
    the page import no TensorFlow."""
    import ast

    for path in (PROJECT_ROOT / "tasks" / "serve").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
        names |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                  for a in node.names}
        assert not {n for n in names if n.split(".")[0] in ("prefect", "optuna")}, path
        assert not {n for n in names if n.startswith(("tasks.search", "tasks.trial",
                                                      "tasks.reports", "flows"))}, path


# --------------------------------------------------------------------------------------------
# The page in a browser (slow)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium():
    """Headless Chromium from Debian driven by Selenium, with fixed paths (Selenium Manager's
    own download cannot work offline): the test skips, saying why, where a part is missing
    (checked before the models are trained and the server started)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            pytest.skip(f"{path} not found (apt-get install {package})")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,820", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def wait_for(condition, timeout: float = 30, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def settled(driver, quiet: float = 0.6) -> int:
    """Wait until the page's predictions stop changing (the last drawing's answer is in):
    the count of updates the page keeps on its body."""
    last, since = None, time.monotonic()
    while time.monotonic() - since < quiet:
        now = driver.execute_script("return document.body.dataset.updates")
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.1)
    return int(last)


@pytest.mark.slow
def test_the_page_in_headless_chromium_draws_uploads_and_shows_the_bars(chromium, server, made,
                                                                         tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = browser()
    try:
        driver.get(server["url"])
        wait_for(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                 == "ready", what="the page's script")
        assert driver.find_element(By.ID, "title").text.startswith("digits")
        card = driver.find_element(By.ID, "card").text
        assert "Accuracy" in card and "Hyperparameters" in card and "units" in card
        canvas = driver.find_element(By.ID, "canvas")
        assert driver.find_elements(By.CSS_SELECTOR, "#bars .bar") == []
        # a stroke with the mouse: the bars appear while drawing
        actions = ActionChains(driver, duration=20)
        actions.move_to_element_with_offset(canvas, -20, -90).click_and_hold()
        for dx, dy in ((30, -10), (30, 30), (-40, 60), (-20, 60), (50, 0)):
            actions.move_by_offset(dx, dy)
        actions.release().perform()
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#bars .bar"), what="the bars")
        settled(driver)
        bars = driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
        assert len(bars) == 10
        assert [b.find_element(By.CLASS_NAME, "name").text for b in bars] == \
            [str(d) for d in range(10)]
        widths = [float(b.find_element(By.CLASS_NAME, "fill").value_of_css_property("width")
                        .removesuffix("px")) for b in bars]
        assert max(widths) > 0
        wait_for(lambda: driver.execute_script(
            "return document.getElementById('seen').getContext('2d')"
            ".getImageData(0, 0, 28, 28).data.some((v, i) => i % 4 === 0 && v > 0)"),
            what="the model's view of the drawing")
        driver.save_screenshot(str(tmp_path / "drawn.png"))
        # an upload: an MNIST-like test image as a PNG file
        image = made["x_test"][7]
        path = tmp_path / "test-image.png"
        from PIL import Image

        Image.fromarray(image).save(path)
        expected = int(keras_probabilities(made, "digits", image[None]).argmax())
        driver.find_element(By.ID, "clear").click()
        wait_for(lambda: not driver.find_elements(By.CSS_SELECTOR, "#bars .bar"),
                 what="the bars to clear")
        driver.find_element(By.ID, "file").send_keys(str(path))
        predicted = driver.find_element(By.ID, "predicted")
        wait_for(lambda: predicted.get_attribute("data-class") is not None, what="the upload")
        assert int(predicted.get_attribute("data-class")) == expected
        assert predicted.get_attribute("data-name") == str(expected)
        assert driver.find_element(By.ID, "error").text == ""
        assert driver.find_element(By.ID, "preview").is_displayed()
        shot = tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
