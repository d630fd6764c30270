"""A real qinsd serving the tiny random-weight model and a real qins-web in
front of it, for the tests of qins-web's APIs (ollama's, /metrics).

The binaries come from QINS_BIN_DIR (default ${CARGO_TARGET_DIR:-target}/release:
cargo build --release --workspace --bins). Use it from setUpClass:

    cls.stack = Stack.start(cls)   # stopped by the class's cleanups
    cls.stack.base                 # http://127.0.0.1:PORT
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
START_TIMEOUT = 30.0


def bin_dir():
    if os.environ.get("QINS_BIN_DIR"):
        return Path(os.environ["QINS_BIN_DIR"])
    return ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "release"


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


class Stack:
    def __init__(self, tmp, daemon, base):
        self.tmp = tmp
        self.daemon = daemon
        self.base = base

    @classmethod
    def start(cls, test_class):
        """Starts qinsd and qins-web; `test_class`'s class cleanups stop them."""
        bins = bin_dir()
        qinsd, web = bins / "qinsd", bins / "qins-web"
        for b in (qinsd, web):
            if not os.access(b, os.X_OK):
                raise AssertionError(
                    f"{b} missing: cargo build --release --workspace --bins, or set QINS_BIN_DIR"
                )
        # Short: it holds the socket.
        tmp = Path(tempfile.mkdtemp(prefix="qins-py.", dir="/tmp"))
        test_class.addClassCleanup(shutil.rmtree, tmp, ignore_errors=True)
        models = tmp / "models"
        models.mkdir()
        for args in (
            [str(qinsd.with_name("qins-fixture")), "tiny", "--arch", "phi3", "--out", str(tmp / "tinyhf")],
            [str(qinsd), "convert", str(tmp / "tinyhf"), "-o", str(models / f"{MODEL}.qins")],
        ):
            subprocess.run(args, check=True, capture_output=True, timeout=120)
        sock = tmp / "s.sock"
        daemon_log = open(tmp / "qinsd.log", "wb")
        test_class.addClassCleanup(daemon_log.close)
        daemon = subprocess.Popen(
            [str(qinsd), "--model", MODEL, "--models-dir", str(models), "--socket", str(sock)],
            stdout=daemon_log, stderr=subprocess.STDOUT,
        )
        test_class.addClassCleanup(stop, daemon)
        # A free port can be taken before qins-web binds it: try a few.
        for _ in range(3):
            port = free_port()
            web_log = open(tmp / "web.log", "wb")
            test_class.addClassCleanup(web_log.close)
            proc = subprocess.Popen(
                [str(web), "--socket", str(sock), "--listen", f"127.0.0.1:{port}"],
                stdout=web_log, stderr=subprocess.STDOUT,
            )
            test_class.addClassCleanup(stop, proc)
            stack = cls(tmp, daemon, f"http://127.0.0.1:{port}")
            if stack._wait_healthy(proc):
                return stack
            stop(proc)
        logs = "".join(
            f"--- {n}\n{(tmp / n).read_text(errors='replace')[-2000:]}"
            for n in ("qinsd.log", "web.log")
        )
        raise AssertionError("qins-web never answered /health\n" + logs)

    def _wait_healthy(self, proc):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if self.daemon.poll() is not None:
                raise AssertionError(
                    "qinsd exited: " + (self.tmp / "qinsd.log").read_text(errors="replace")
                )
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
