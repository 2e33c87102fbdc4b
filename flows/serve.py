"""Serve a run's model: a page to try it, and a JSON API.

    python flows/serve.py --model latest                              # the newest run's model
    python flows/serve.py --model reports/grid-20250101-120000-ab12 --port 8000
    python flows/serve.py --model latest --host 0.0.0.0               # open to other machines

Find the model (as predict finds it: a model folder, a report folder's model/, or the newest
report's) -> bind the address (before TensorFlow starts: a bad argument is one line, exit
status 2) -> load model.keras -> answer until Ctrl-C: the page (draw or upload an input, see
the class probabilities and the model's card) and the API (POST /predict in TensorFlow
Serving's REST shape, GET /model, GET /health). A plain command, not a Prefect flow: it
starts no Prefect server and writes nothing.
"""

from __future__ import annotations

import argparse
import sys

from tasks.errors import UserError
from tasks.predict.model import LATEST, find_model
from tasks.serve.server import LOOPBACK, bind, run_command, serve

DESCRIPTION = """\
Serve a run's model (its model/ folder) on this machine: a page to try it and a JSON API.
A plain command, not a Prefect flow: no Prefect server starts and nothing is written (but a
log file, should an unexpected error happen); it runs until Ctrl-C.

The page (GET /): for models of small grey images (up to 64x64) a canvas to draw on (white
ink on black, as in MNIST; the drawing is made into the model's input as MNIST's digits were
made), an upload for every model (an image file; a CSV file, or a row typed in, for a table
model), the class probabilities as bars, updated as you draw, and the model's card (data,
accuracy, hyperparameters, from model.json).

The API: POST /predict takes {"instances": [...]}, each instance the model's raw input (an
image as nested lists of 0..255, a table's row of feature values) or {"b64": "<an image file
in base64>"} (converted as flows/predict.py converts image files), and answers
{"predictions": [[p0, ...], ...], "class_names": [...]}; GET /model answers model.json, GET
/health {"status": "ok", ...}. Bad input is a 4xx answer {"error": "<one line>"}; the server
keeps serving.
"""
EPILOG = """\
exit status: 130: stopped with Ctrl-C; 2: a bad argument (one line, before TensorFlow starts
where it can be: the model, the port, the host; or a model.keras that does not load); 1: the
server could not run.
examples:
  python flows/serve.py --model latest
  python flows/serve.py --model reports/grid-20250101-120000-ab12/model --port 8000
  curl -s http://127.0.0.1:8000/predict -d '{"instances": [[[0, 0, ...], ...]]}'
"""


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``error: argument --port: invalid int value``)."""

    def error(self, message: str):
        raise UserError(message)


def parser() -> argparse.ArgumentParser:
    """The command line's options."""
    options = _OneLineParser(prog="python flows/serve.py", description=DESCRIPTION,
                             epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument(
        "--model", default=LATEST, metavar="PATH|latest",
        help="the model: a model folder (model.keras, model.json), a run's report folder (its "
             "model/), a model.keras file, or latest: the newest report folder with a model/ "
             f"under --reports-dir (default: {LATEST})")
    options.add_argument(
        "--port", type=int, default=0, metavar="PORT",
        help="the port to listen on (default: 0, a free port, printed with the address)")
    options.add_argument(
        "--host", default=LOOPBACK, metavar="ADDRESS",
        help=f"the address to listen on (default: {LOOPBACK}, this machine only); 0.0.0.0 "
             "opens the page and the API to every machine that can reach this one, with no "
             "password: only on a network you trust")
    options.add_argument(
        "--max-body", type=int, default=None, metavar="BYTES",
        help="the most bytes a request body may hold; a larger one is answered 413 (default: "
             "what 1000 of the model's raw inputs take as JSON: 4,096,000 for 28x28 8-bit "
             "images)")
    options.add_argument(
        "--reports-dir", default=None, metavar="DIR",
        help="where latest is looked for (default: ./reports or $PIPELINE_REPORTS_DIR)")
    options.add_argument("-v", "--verbose", action="store_true",
                         help="show the server's own log (every request) on the terminal")
    return options


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, their values checked (nothing is looked up or bound yet)."""
    args = parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be 0 (a free port) to 65535")
    if args.max_body is not None and args.max_body < 1024:
        raise UserError(f"--max-body {args.max_body}: must be at least 1024 bytes")
    if not args.host.strip():
        raise UserError("--host: empty; give an address (127.0.0.1, 0.0.0.0)")
    return args


def main(argv: list[str] | None = None) -> None:
    """Check the options, find the model, bind the address, then serve until stopped."""
    from tasks.serve.instances import default_max_body

    args = parse_arguments(argv)
    model = find_model(args.model, args.reports_dir)
    sock = bind(args.host, args.port)
    serve(model, sock, args.host, args.max_body or default_max_body(model), args.verbose)


if __name__ == "__main__":
    sys.exit(run_command(main))
