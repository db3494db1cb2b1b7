"""Starting the real app in a subprocess on a free port, for the client and browser tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "test-artifacts" / "screenshots"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppProcess:
    def __init__(self, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"studio-app-{self.port}.log", "w+")
        command = [sys.executable, str(ROOT / "app.py"), "--port", str(self.port), *args]
        full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app exited early:\n{self.output()}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"app did not start:\n{self.output()}")

    def wait_for_log(self, text: str, timeout: float = 240) -> None:
        """Wait until the app has logged `text` (e.g. a background warm-up finishing)."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the app never logged {text!r}:\n{self.output()[-2000:]}")
            time.sleep(0.5)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def open_app_page(browser, app: AppProcess):
    """A 1400×1000 browser page on the running app (the screenshot folder made ready)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app.url, wait_until="domcontentloaded", timeout=60_000)
    return page
