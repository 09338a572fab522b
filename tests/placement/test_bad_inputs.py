"""Issue 23, the placement side: a bad Optuna ``--storage`` or Dask ``--scheduler`` is refused in one line that
names it and the fix, before any work: not a URL, a missing folder, a file that is not SQLite or not an Optuna
storage; a port where no scheduler (or another service) listens answers within the connect timeout, never hangs
and never reads the other service's bytes as a Dask frame (MemoryError)."""
import socket
import sqlite3
import threading
from contextlib import contextmanager

import pytest

from analysis.cli import main
from analysis.study.placement_config import PlacementConfig
from placement import Placement, SearchSpace, search
from placement.optuna_storage import check_storage
from placement.evaluator import connect_scheduler
from tests.helpers import refused as _refused


def _cli(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err and "this is a bug" not in err, err
    assert err.count("\n") == 1, err
    return rc, err


def _sqlite(path, *tables):
    con = sqlite3.connect(path)
    for t in tables:
        con.execute(f"CREATE TABLE {t} (x INTEGER)")
    con.commit()
    con.close()
    return path


def _objective(p: Placement) -> dict:
    return {"accuracy_%": 90.0 + sum(p.kept), "mean_ms": 1.0 + sum(p.kept)}


SPACE = SearchSpace(3, ((), (), ()), (), (1.0, 2.0, 3.0))


# ----------------------------------------------------------------------------- 1. --storage
@pytest.mark.parametrize("make, exc, phrases", [
    (lambda d: "foo", ValueError, ["storage 'foo' is not an Optuna storage URL", "sqlite:///runs/optuna.db"]),
    (lambda d: str(d / "x.db"), ValueError, ["is not an Optuna storage URL", "sqlite:////"]),
    (lambda d: "", ValueError, ["storage must be an Optuna storage URL such as sqlite:///runs/optuna.db"]),
    (lambda d: 3, ValueError, ["storage must be an Optuna storage URL"]),
    (lambda d: f"sqlite:///{d}/no/such/folder/x.db", FileNotFoundError, ["/no/such/folder' does not exist"]),
    (lambda d: f"sqlite:///{d}", ValueError, ["is a folder, not a SQLite file"]),
    (lambda d: (d / "junk.db").write_bytes(b"\x00garbage, not a database" * 8) and f"sqlite:///{d}/junk.db",
     ValueError, ["junk.db' is not a SQLite database"]),
    (lambda d: (d / "short.db").write_bytes(b"SQLite") and f"sqlite:///{d}/short.db",
     ValueError, ["is not a SQLite database"]),
    (lambda d: (d / "bad.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 200) and f"sqlite:///{d}/bad.db",
     ValueError, ["bad.db' is not a readable SQLite database"]),
    (lambda d: f"sqlite:///{_sqlite(d / 'other.db', 'users', 'orders')}", ValueError,
     ["other.db' is a SQLite database but not an Optuna storage", "orders, users"]),
])
def test_bad_storage_is_refused_in_one_line(tmp_path, make, exc, phrases):
    url = make(tmp_path)
    for fn in (check_storage, lambda u: PlacementConfig(strategies=("nsga2",), storage=u)):
        msg = _refused(exc, phrases[0], fn, url)
        assert all(p in msg for p in phrases), msg


def test_good_storages_pass(tmp_path):
    import optuna

    (tmp_path / "empty.db").write_bytes(b"")
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s")
    finally:
        optuna.logging.set_verbosity(level)
    good = [f"sqlite:///{tmp_path}/new.db",  # absent, in an existing folder: Optuna creates it
            f"sqlite:///{tmp_path}/empty.db",  # an empty file
            f"sqlite:///{_sqlite(tmp_path / 'no_tables.db')}",  # a SQLite database without tables
            f"sqlite:///{tmp_path}/optuna.db",  # an Optuna storage (resumed)
            f"sqlite+pysqlite:///{tmp_path}/optuna.db?timeout=3",
            "sqlite://", "sqlite:///:memory:",
            "postgresql://user@db.invalid/optuna"]  # other databases: left to Optuna, nothing contacted
    for url in good:
        assert check_storage(url) == url
        assert PlacementConfig(strategies=("nsga2",), storage=url).storage == url
    assert not (tmp_path / "new.db").exists()


def test_a_study_yaml_names_the_storage_field(tmp_path):
    from analysis.study.config import StudyConfigError, parse_study

    raw = {"data": {"dataset": "mnist5k"}, "model": {"name": "b-lenet"},
           "placement": {"strategies": ["nsga2"], "storage": str(tmp_path / "x.db")}}
    _refused(StudyConfigError, f"placement: storage '{tmp_path / 'x.db'}' is not an Optuna storage URL",
             parse_study, raw)


def test_a_non_optuna_database_is_left_untouched_by_the_search(tmp_path):
    path = _sqlite(tmp_path / "app.db", "users")
    before = path.read_bytes()
    _refused(ValueError, "not an Optuna storage", search, "nsga2", SPACE, _objective, progress=False,
             storage=f"sqlite:///{path}", study_name="s", trials=2)
    assert path.read_bytes() == before  # Optuna never added its tables


@pytest.mark.parametrize("storage, phrase", [
    ("foo", "branchy place: error: --storage: storage 'foo' is not an Optuna storage URL; give one such as "
            "sqlite:///runs/optuna.db"),
    ("sqlite:///TMP/nowhere/s.db", "/nowhere' does not exist"),
    ("sqlite:///TMP/junk.db", "junk.db' is not a SQLite database"),
    ("sqlite:///TMP/app.db", "is a SQLite database but not an Optuna storage"),
])
def test_bad_storage_on_the_command_line_is_a_one_line_error_before_any_work(tmp_path, capsys, storage, phrase):
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 4)
    _sqlite(tmp_path / "app.db", "users")
    out = tmp_path / "out"
    rc, err = _cli(["place", "--cache", str(tmp_path / "no-cache"), "--predictors", str(tmp_path / "no-preds"),
                    "--out", str(out), "--strategy", "nsga2", "--storage", storage.replace("TMP", str(tmp_path))],
                   capsys)
    assert rc == 2 and phrase in err, err
    assert not out.exists()


# ----------------------------------------------------------------------------- 2. --scheduler
@contextmanager
def _listener(mode: str):
    """A plain TCP service on localhost (not Dask): ``silent`` accepts and says nothing, ``http`` answers every
    connection with an HTTP error, ``close`` hangs up at once. Yields its tcp:// address."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    held, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except (socket.timeout, OSError):
                continue
            if mode == "close":
                c.close()
                continue
            if mode == "http":
                try:
                    c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n" * 4)
                except OSError:
                    pass
            held.append(c)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        srv.close()


@pytest.mark.parametrize("mode, phrase", [
    ("silent", "it accepted the connection but sent no Dask handshake"),
    ("http", "something else listens there"),  # its bytes read as a frame length: MemoryError, not raised
    ("close", "no Dask scheduler answered within 2 s"),
])
def test_a_port_without_a_dask_scheduler_is_a_one_line_error(mode, phrase):
    pytest.importorskip("distributed")
    with _listener(mode) as address:
        msg = _refused(ValueError, phrase, connect_scheduler, address, timeout=2)
    assert msg.startswith(f"--scheduler {address}: no Dask scheduler answered within 2 s ("), msg
    assert "start one with `dask scheduler`" in msg and "leave --scheduler out" in msg, msg


def test_nothing_listening_is_a_one_line_error_too():
    pytest.importorskip("distributed")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    _refused(ValueError, f"--scheduler tcp://127.0.0.1:{port}: no Dask scheduler answered within 1 s",
             connect_scheduler, f"tcp://127.0.0.1:{port}", timeout=1)


@pytest.mark.parametrize("address, timeout, phrase", [
    (None, 1, "--scheduler must be a Dask scheduler's address such as tcp://host:8786"),
    ("", 1, "--scheduler must be a Dask scheduler's address"),
    ("tcp://127.0.0.1:1", 0, "connect timeout must be a number of seconds > 0, got 0"),
    ("tcp://127.0.0.1:1", float("nan"), "connect timeout must be a number of seconds > 0"),
])
def test_bad_scheduler_arguments(address, timeout, phrase):
    pytest.importorskip("distributed")
    _refused(ValueError, phrase, connect_scheduler, address, timeout=timeout)


def test_the_search_and_the_evaluator_take_the_connect_timeout_from_dask_config():
    pytest.importorskip("distributed")
    import dask

    from placement.evaluator import Evaluator

    with _listener("silent") as address:
        ev = Evaluator(_objective, progress=False, scheduler=address, connect_timeout=1)
        _refused(ValueError, "no Dask scheduler answered within 1 s", ev.client)
        ev.close()
        with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
            _refused(ValueError, "no Dask scheduler answered within 2 s (it accepted the connection but sent no "
                                 "Dask handshake)", search, "greedy-backward", SPACE, _objective, progress=False,
                     scheduler=address)


def test_a_bad_scheduler_on_the_command_line_is_a_one_line_error_before_any_work(tmp_path, capsys):
    pytest.importorskip("distributed")
    import dask

    out = tmp_path / "out"
    with _listener("http") as address, dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        rc, err = _cli(["place", "--cache", str(tmp_path / "no-cache"), "--predictors", str(tmp_path / "no-preds"),
                        "--out", str(out), "--scheduler", address], capsys)
    assert rc == 2 and f"branchy place: error: --scheduler {address}: no Dask scheduler answered within 2 s" in err
    assert "something else listens there" in err and "no-cache" not in err, err  # before the cache is opened
    assert not out.exists()


def test_a_study_with_a_bad_scheduler_fails_before_training(tmp_path):
    pytest.importorskip("distributed")
    import dask

    from analysis.study.config import parse_study
    from analysis.study.pipeline import run_study

    with _listener("http") as address, dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        cfg = parse_study({"data": {"dataset": "mnist5k"}, "model": {"name": "b-lenet"}, "out": str(tmp_path / "s"),
                           "placement": {"scheduler": address}})
        _refused(ValueError, "no Dask scheduler answered within 2 s", run_study, cfg)
    assert not (tmp_path / "s").exists()  # nothing trained, nothing written
