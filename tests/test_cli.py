"""Bad input gets one clear line and a non-zero exit before any training starts."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, synthetic_mnist, write_npz

from flows import grid, random_search, train
from tasks.cli import run_cli


@pytest.fixture
def reports(tmp_path):
    return tmp_path / "reports"


def fails(main, argv, capsys, reports):
    code = run_cli(main, argv + ["--reports-dir", str(reports)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not reports.exists() or not any(reports.iterdir())  # nothing written
    return err


@pytest.mark.parametrize("argv, words", [
    (["--dropout", "1.2"], "dropout=1.2"),
    (["--dropout", "-0.1"], "dropout=-0.1"),
    (["--units", "0"], "units=0"),
    (["--batch-size", "0"], "batch_size=0"),
    (["--epochs", "0"], "epochs=0"),
    (["--learning-rate", "0"], "learning_rate=0.0"),
    (["--learning-rate", "-1"], "learning_rate=-1.0"),
    (["--workers", "0"], "workers=0"),
    (["--worker-memory", "0"], "worker_memory=0.0"),
])
def test_bad_grid_parameters(argv, words, capsys, reports, mnist_file):
    err = fails(grid.main, argv + ["--data", str(mnist_file)], capsys, reports)
    assert words in err


def test_unknown_activation_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        grid.main(["--activation", "swish"])
    assert info.value.code == 2
    assert "invalid choice: 'swish'" in capsys.readouterr().err


def test_too_many_random_trials(capsys, reports, mnist_file):
    err = fails(random_search.main, ["--units", "8", "16", "--dropout", "0", "--activation",
                                     "relu", "--learning-rate", "0.001", "--batch-size", "32",
                                     "--trials", "3", "--data", str(mnist_file)],
                capsys, reports)
    assert "trials=3: more than the 2 distinct configurations" in err


def test_data_problems(tmp_path, capsys, reports, mnist_file):
    err = fails(train.main, ["--data", str(tmp_path / "missing.npz")], capsys, reports)
    assert "missing.npz: file not found" in err
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(mnist_file.read_bytes()[:5000])
    assert "cut.npz: not a readable .npz" in fails(train.main, ["--data", str(truncated)],
                                                   capsys, reports)
    arrays = synthetic_mnist(n_train=50, n_test=9000)
    arrays["x_train"] = arrays["x_train"].astype(np.float32)
    arrays["x_train"][0, 0, 0] = np.nan
    nan = write_npz(tmp_path / "nan.npz", arrays)
    assert "NaN" in fails(train.main, ["--data", str(nan)], capsys, reports)
    arrays = synthetic_mnist(n_train=50, n_test=9000)
    arrays["y_test"][3] = 11
    labels = write_npz(tmp_path / "labels.npz", arrays)
    assert "class(es) '11' absent from the training split" in fails(
        train.main, ["--data", str(labels)], capsys, reports)
    err = fails(train.main, ["--data", str(mnist_file), "--train-samples", "601"], capsys,
                reports)
    assert "train_samples=601: larger than the 600 training images" in err


def test_unwritable_reports_directory(tmp_path, capsys, mnist_file):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = run_cli(grid.main, ["--data", str(mnist_file), "--reports-dir", str(blocker / "x")])
    err = capsys.readouterr().err
    assert code == 2 and f"reports directory {blocker / 'x'}: not writable" in err


def test_command_line_exit_status_and_help():
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    bad = subprocess.run([sys.executable, "flows/grid.py", "--dropout", "1.5"],
                         cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: dropout=1.5: must be less than 1"]
    helped = subprocess.run([sys.executable, "flows/random_search.py", "--help"],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0
    for option in ("--trials", "--study", "--protocol", "--repeats", "--draw-seed",
                   "--train-seed", "--epochs", "--data", "--reports-dir", "--train-samples",
                   "--runner", "--workers", "--max-failures"):
        assert option in helped.stdout


def test_a_study_option_without_study_is_an_error_not_ignored(capsys, reports, mnist_file):
    err = fails(random_search.main, ["--n", "2", "4", "--data", str(mnist_file)], capsys,
                reports)
    assert err == "error: --n belongs to --study: add --study"


def test_a_lost_prefect_server_is_named_in_the_one_line(capsys, monkeypatch):
    import httpx

    from tasks import cli

    monkeypatch.setattr(cli, "_log_path", Path("/tmp/run.log"))
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4300/api"}):
        code = cli.unexpected(httpx.ConnectError("[Errno 111] Connection refused"))
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: the Prefect server http://127.0.0.1:4300/api stopped "
                          "answering (ConnectError: [Errno 111] Connection refused); finished "
                          "trials are cached: rerun the same command once it is back")


def test_a_wrapped_storage_error_names_what_it_wraps_in_one_line(capsys, monkeypatch):
    """Optuna's StorageInternalError says "exceeding max length" whatever went wrong; a lost
    database connection (SQLAlchemy's messages run over several lines) is what the line
    names. The same line goes into a failed report step's message."""
    import optuna.exceptions
    import sqlalchemy.exc

    from tasks import cli
    from tasks.errors import one_line

    monkeypatch.setattr(cli, "_log_path", Path("/tmp/run.log"))
    lost = sqlalchemy.exc.OperationalError(
        "COMMIT", {}, Exception("terminating connection due to administrator command"))
    try:
        try:
            raise lost
        except sqlalchemy.exc.OperationalError as exc:
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit. This typically happens due to "
                "invalid data in the commit, e.g. exceeding max length. ") from exc
    except optuna.exceptions.StorageInternalError as wrapped:
        assert one_line(wrapped) == ("OperationalError: (builtins.Exception) terminating "
                                     "connection due to administrator command")
        code = cli.unexpected(wrapped)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: OperationalError: (builtins.Exception) terminating "
                          "connection due to administrator command"), err
    assert "max length" not in err
    assert "\n" in str(lost)  # SQLAlchemy's own message: more than one line
    assert one_line(RuntimeError("")) == "RuntimeError"
