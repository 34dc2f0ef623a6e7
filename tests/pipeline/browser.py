"""Open an HTML file in headless Chromium through the DevTools protocol over a pipe
(``--remote-debugging-pipe``: NUL-separated JSON on file descriptors 3 and 4), so no Python
package beyond the standard library is needed. Returns what the page did: its images'
natural widths, console errors and exceptions, and a PNG screenshot."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class _Pipe:
    def __init__(self, browser: str, profile: str) -> None:
        to_r, self._to_w = os.pipe()  # we write, chromium reads on fd 3
        self._from_r, from_w = os.pipe()  # chromium writes on fd 4
        args = [browser, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-extensions", f"--user-data-dir={profile}", "--window-size=1280,1600", "about:blank"]  # fmt: skip

        def fds() -> None:  # copies first, so that a pipe end already numbered 3 or 4 is not clobbered
            a, b = os.dup(to_r), os.dup(from_w)
            os.dup2(a, 3)  # dup2 makes them inheritable
            os.dup2(b, 4)

        self.proc = subprocess.Popen(args, pass_fds=(), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False)
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None, timeout: float = 30) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)
        raise TimeoutError(method)

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.time() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while time.time() < deadline:
            m = self._read(deadline)
            self.events.append(m)
            if m.get("method") == method:
                return m
        raise TimeoutError(method)

    def _read(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buf:
            r, _, _ = select.select([self._from_r], [], [], max(0.0, deadline - time.time()))
            if not r:
                raise TimeoutError("no answer from the browser")
            chunk = os.read(self._from_r, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_w)
        os.close(self._from_r)


def open_page(html: Path, screenshot: Path, browser: str | None = None) -> dict[str, Any]:
    """Load ``html`` from disk (file://), wait for its load event, check images and the
    console, write a full-page ``screenshot``."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH")
    with tempfile.TemporaryDirectory() as profile:
        pipe = _Pipe(browser, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Page.navigate", {"url": html.resolve().as_uri()}, session=session)
            pipe.wait_event("Page.loadEventFired", timeout=60)
            js = "JSON.stringify(Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth})))"
            images = json.loads(pipe.send("Runtime.evaluate", {"expression": js, "returnByValue": True}, session=session)["result"]["value"])
            size = pipe.send("Runtime.evaluate", {"expression": "JSON.stringify([document.documentElement.scrollWidth, document.documentElement.scrollHeight])",
                                                  "returnByValue": True}, session=session)["result"]["value"]  # fmt: skip
            w, h = json.loads(size)
            shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                        "clip": {"x": 0, "y": 0, "width": w, "height": min(h, 16000), "scale": 1}},
                             session=session)  # fmt: skip
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            errors = []
            for e in pipe.events:
                m, p = e.get("method"), e.get("params", {})
                if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                    errors.append(str(p.get("args")))
                elif m == "Runtime.exceptionThrown":
                    errors.append(str(p.get("exceptionDetails")))
                elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                    errors.append(p["entry"].get("text", ""))
            title = pipe.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True}, session=session)["result"]["value"]
            return {"images": images, "errors": errors, "title": title, "size": [w, h]}
        finally:
            pipe.close()
