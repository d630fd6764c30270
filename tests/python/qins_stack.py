"""The one way the Python tests start qinsd (and qins-web in front of it):
a real qinsd serving the tiny random-weight model, one start timeout, one
readiness check, and the CI rule every test that may skip follows.

The binaries come from QINS_BIN_DIR (default ${CARGO_TARGET_DIR:-target}/release:
cargo build --release --workspace --bins). Use it from setUpClass:

    cls.daemon = Daemon.start(cls)   # qinsd alone (stopped by the class's cleanups)
    cls.daemon.socket                # its Unix socket
    cls.stack = Stack.start(cls)     # qinsd and qins-web
    cls.stack.base                   # http://127.0.0.1:PORT
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny"
# How long qinsd (model load included) and qins-web get to become ready: a
# loaded CI machine with two cores has needed more than 30 s.
START_TIMEOUT = 60.0


def on_ci():
    """The CI rule of the Rust tests (qins_test_support::can_run): CI set
    to `true` or `1`."""
    return os.environ.get("CI") in ("true", "1")


def require(test, available, needs):
    """Skips `test` (a unittest.TestCase) saying why when `available` is
    false; under CI, where everything a test needs is provided, fails it."""
    if available:
        return
    if on_ci():
        test.fail(f"this test needs {needs}, which CI provides (CI={os.environ['CI']})")
    test.skipTest(f"this test needs {needs}")


def require_package(test, module, package):
    """Fails `test` when a package pinned in requirements.txt did not import."""
    if module is None:
        test.fail(
            f"the `{package}` package is not importable: run tests/python/run.sh, which "
            "installs tests/python/requirements.txt into ~/.cache/qins/venv-tests"
        )


def openai_client(openai, stack):
    """The official client (the `openai` module, passed in so this module
    needs no package) on qins-web's /v1, without retries."""
    return openai.OpenAI(
        base_url=stack.base + "/v1", api_key="not-checked", max_retries=0, timeout=60.0
    )


def bin_dir():
    if os.environ.get("QINS_BIN_DIR"):
        return Path(os.environ["QINS_BIN_DIR"])
    return ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "release"


def binary(name):
    """A built binary of the workspace; an AssertionError saying how to
    build it when it is missing."""
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        raise AssertionError(
            f"{path} missing: cargo build --release --workspace --bins, or set QINS_BIN_DIR"
        )
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tail(path, chars=3000):
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as e:
        return f"({path}: {e})"


class Daemon:
    """qinsd serving the tiny fixture model from a models directory of its own."""

    def __init__(self, tmp, proc, socket_path, log):
        self.tmp = tmp
        self.proc = proc
        self.socket = socket_path
        self.log = log
        self.models = tmp / "models"

    @classmethod
    def start(cls, test_class, extra_args=()):
        """Converts the tiny fixture, starts qinsd on it and waits until it
        is ready (see `wait_ready`); `test_class`'s class cleanups stop it
        and remove its files. `extra_args` go to qinsd (e.g. --log-level)."""
        qinsd = binary("qinsd")
        # Short: it holds the socket.
        tmp = Path(tempfile.mkdtemp(prefix="qins-py.", dir="/tmp"))
        test_class.addClassCleanup(shutil.rmtree, tmp, ignore_errors=True)
        models = tmp / "models"
        models.mkdir()
        for args in (
            [str(binary("qins-fixture")), "tiny", "--arch", "phi3", "--out", str(tmp / "tinyhf")],
            [str(qinsd), "convert", str(tmp / "tinyhf"), "-o", str(models / f"{MODEL}.qins")],
        ):
            subprocess.run(args, check=True, capture_output=True, timeout=120)
        sock, log_path = tmp / "s.sock", tmp / "qinsd.log"
        log = open(log_path, "wb")
        test_class.addClassCleanup(log.close)
        proc = subprocess.Popen(
            [
                str(qinsd), "--model", MODEL, "--models-dir", str(models),
                "--socket", str(sock), *extra_args,
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )
        test_class.addClassCleanup(stop, proc)
        daemon = cls(tmp, proc, sock, log_path)
        daemon.wait_ready()
        return daemon

    def log_tail(self):
        return tail(self.log)

    def check_running(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"qinsd exited ({self.proc.returncode}):\n{self.log_tail()}")

    def wait_ready(self):
        """The one readiness check: `qins ps` on the socket names the model
        (qinsd binds the socket before the model is loaded)."""
        qins = binary("qins")
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            self.check_running()
            try:
                ps = subprocess.run(
                    [str(qins), "--socket", str(self.socket), "ps"],
                    capture_output=True, text=True, timeout=10,
                )
                if ps.returncode == 0 and MODEL in ps.stdout.split():
                    return
                last = ps.stdout + ps.stderr
            except subprocess.TimeoutExpired:
                last = "`qins ps` took over 10 s"
            time.sleep(0.1)
        raise AssertionError(
            f"qinsd served no model {MODEL!r} within {START_TIMEOUT} s; "
            f"`qins ps` said: {last.strip()}\n{self.log_tail()}"
        )


class Stack:
    """A ready qinsd and a qins-web in front of it."""

    def __init__(self, daemon, web, base):
        self.daemon = daemon
        self.tmp = daemon.tmp
        self.web = web
        self.base = base

    @classmethod
    def start(cls, test_class):
        """Starts qinsd, then qins-web; `test_class`'s class cleanups stop them."""
        web = binary("qins-web")
        daemon = Daemon.start(test_class)
        web_log = daemon.tmp / "web.log"
        # A free port can be taken before qins-web binds it: try a few.
        for _ in range(3):
            port = free_port()
            log = open(web_log, "wb")
            test_class.addClassCleanup(log.close)
            proc = subprocess.Popen(
                [str(web), "--socket", str(daemon.socket), "--listen", f"127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT,
            )
            test_class.addClassCleanup(stop, proc)
            stack = cls(daemon, proc, f"http://127.0.0.1:{port}")
            if stack._wait_healthy():
                return stack
            stop(proc)
        raise AssertionError(
            f"qins-web never answered /health\n--- qinsd.log\n{daemon.log_tail()}"
            f"\n--- web.log\n{tail(web_log)}"
        )

    def _wait_healthy(self):
        """qins-web's /health says qinsd is reachable; false when qins-web
        exits (its port was taken) or the time is up."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.web.poll() is not None:
                return False
            self.daemon.check_running()
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200 and json.load(r).get("qinsd") == "reachable":
                        return True
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.1)
        return False

    def get(self, path):
        """(status, content type, body text) of a GET."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read().decode()
