"""Running the application: the listening socket, the model loaded, uvicorn kept quiet.

The socket is bound before TensorFlow starts (an address in use is one line at once) and
listens from then on, so a request sent as soon as the address is printed waits for the
server instead of being refused. uvicorn runs with no access log, and its own records
(and the traceback of an unexpected error, :mod:`tasks.serve.app`) go to a log file,
``$PREFECT_HOME/logs/serve-<time>-<pid>.log``, opened only when there is something to write:
the terminal shows the address and nothing else.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from tasks.errors import UserError
from tasks.predict.model import ModelFolder

#: Where the server listens unless ``--host`` says otherwise: this machine only.
LOOPBACK = "127.0.0.1"


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0: a free port) and listening; one line if it
    cannot be (an address in use, not this machine's, a host name that does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"--port {port}: already in use on {host} (another server?); "
                            "give another --port, or leave it out for a free one") from None
        if exc.errno == errno.EACCES:
            raise UserError(f"--port {port}: not allowed (ports below 1024 need root)") from None
        raise UserError(f"--host {host} --port {port}: cannot listen there "
                        f"({exc.strerror or exc})") from None
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    """The page's address: ``http://127.0.0.1:PORT/``, the host as given (an address of every
    interface, ``0.0.0.0`` or ``::``, as this machine's name)."""
    port = sock.getsockname()[1]
    shown = host
    try:
        if ipaddress.ip_address(host).is_unspecified:
            shown = socket.gethostname()
    except ValueError:
        pass
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def log_path() -> Path:
    """This server's log file, ``$PREFECT_HOME/logs/serve-<time>-<pid>.log`` (neither it nor
    its folder is created until there is something to write: :class:`LazyFileHandler`)."""
    folder = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser() / "logs"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return folder / f"serve-{stamp}-{os.getpid()}.log"


class LazyFileHandler(logging.FileHandler):
    """A log file opened, its folder created, at the first record; where that fails (no
    writable Prefect home) the record goes to the temporary directory instead."""

    def __init__(self, filename: str, encoding: str = "utf-8") -> None:
        super().__init__(filename, encoding=encoding, delay=True)

    def _open(self):
        try:
            Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
            return super()._open()
        except OSError:
            self.baseFilename = str(Path(tempfile.gettempdir()) / Path(self.baseFilename).name)
            return super()._open()


#: The loggers the server's log file takes: uvicorn's and :mod:`tasks.serve.app`'s.
LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "tasks.serve")


def quiet_logs(path: Path, verbose: bool = False) -> None:
    """uvicorn's records and :mod:`tasks.serve.app`'s go to ``path`` (warnings and errors,
    the file opened on the first: :class:`LazyFileHandler`), not to the terminal
    (``verbose``: everything, to the terminal too). The loggers are set one by one, not by
    ``logging.config``, which would close every other handler of the process."""
    file = LazyFileHandler(str(path))
    handlers: list[logging.Handler] = [file]
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    form = logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s | %(message)s")
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "serve_log", False)]:
            logger.removeHandler(old)
            old.close()
        for handler in handlers:
            handler.setFormatter(form)
            handler.serve_log = True
            logger.addHandler(handler)
        logger.setLevel(logging.INFO if verbose else logging.WARNING)
        logger.propagate = False


def load_network(model: ModelFolder):
    """The loaded model and a function of raw inputs to class probabilities, tried once on a
    zero input (the first request does not pay for tracing); one line if it cannot be."""
    import numpy as np

    from tasks.predict.model import load, probabilities

    try:
        network = load(model)
        probabilities(network, np.zeros((1, *model.shape), dtype=model.dtype))
    except Exception as exc:  # a damaged or foreign model.keras: one line
        from tasks.errors import one_line

        raise UserError(f"{model.folder}: its model.keras cannot be loaded and run "
                        f"({one_line(exc)})") from None
    return network, lambda x: probabilities(network, x)


def announce_line(line: str) -> None:
    print(line, flush=True)


def serve(model: ModelFolder, sock: socket.socket, host: str, max_body: int,
          verbose: bool = False, announce=announce_line) -> None:
    """Load the model, then answer requests on ``sock`` until Ctrl-C (or SIGTERM); the
    address and the API are ``announce``d once the model is ready."""
    import uvicorn

    from tasks.serve.app import make_app

    if not verbose:  # TensorFlow's start-up lines (no GPU, CPU features) stay off the terminal
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _, predict = load_network(model)
    path = log_path()
    logging.raiseExceptions = False  # a log file that cannot be written stays off the terminal
    quiet_logs(path, verbose)
    config = uvicorn.Config(make_app(model, predict, max_body), log_config=None,
                            access_log=verbose,
                            log_level="info" if verbose else "warning", lifespan="off",
                            timeout_graceful_shutdown=5, server_header=False)
    server = uvicorn.Server(config)
    url = url_of(sock, host)
    announce(f"Serving {model.name} ({model.takes()}, {len(model.classes)} classes) at {url}")
    announce(f"API: POST {url}predict {{\"instances\": [...]}}, GET {url}model, GET {url}health;"
             f" up to {max_body:,} bytes a request. Ctrl-C stops. Unexpected errors: {path}")
    server.run(sockets=[sock])


def run_command(main, argv: list[str] | None = None) -> int:
    """Run the command ``main``: a bad argument is ``error: <one line>`` and exit status 2,
    Ctrl-C ends it with 130, anything else is one line and 1."""
    import signal

    from tasks.errors import one_line

    # Ctrl-C is KeyboardInterrupt even where this process was started with SIGINT ignored (a
    # parent that ignores it passes that on: a test runner's worker); uvicorn re-raises the
    # SIGINT it caught once it has shut down, and an ignored one would end the server with 0
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    return 0
