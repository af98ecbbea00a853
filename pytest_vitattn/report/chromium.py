"""A headless Chromium driven over the DevTools protocol on a pipe, for report smoke tests.

No WebDriver and no browser download: Chromium is started with ``--remote-debugging-pipe``
and reads protocol commands from file descriptor 3 and writes replies to 4, each message
JSON followed by a NUL byte. Used by the report's browser tests and
``benchmarks/bench_report_open.py``::

    with Chromium() as browser:
        browser.open(Path("report.html").resolve().as_uri())
        browser.evaluate("document.title")
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in containers and CI cannot use Chromium's sandbox
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-pipe",
)


class ChromiumError(RuntimeError):
    """Chromium could not be started, answered with an error, or did not answer in time."""


def find_chromium() -> str | None:
    """Path of a Chromium or Chrome executable ($VITATTN_CHROMIUM first), or None."""
    explicit = os.environ.get("VITATTN_CHROMIUM")
    if explicit:
        return explicit
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """One headless browser with one page; collects the page's console errors.

    Args:
        executable: the browser; default ``find_chromium()``.
        window: viewport (width, height) in CSS pixels.
        timeout: seconds to wait for any reply or page load.
    """

    def __init__(
        self,
        executable: str | None = None,
        *,
        window: tuple[int, int] = (1280, 900),
        timeout: float = 60.0,
    ) -> None:
        self.executable = executable or find_chromium()
        if not self.executable:
            raise ChromiumError("no Chromium found: install the Debian package 'chromium'")
        self.window = window
        self.timeout = timeout
        self.console_errors: list[str] = []
        self._events: list[dict[str, Any]] = []
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None
        self._profile = tempfile.TemporaryDirectory(prefix="vitattn-chromium-")
        self._pid = 0
        self._commands = self._replies = -1

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the browser and attach to a blank page."""
        commands_read, self._commands = _pipe()
        self._replies, replies_write = _pipe()
        width, height = self.window
        argv = [
            self.executable,
            *FLAGS,
            f"--user-data-dir={self._profile.name}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        log = os.path.join(self._profile.name, "chromium.log")
        try:
            self._pid = os.posix_spawn(
                self.executable,
                argv,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT, 0o600),
                    (os.POSIX_SPAWN_DUP2, 1, 2),
                    # The protocol's fixed descriptors; dup2 also clears close-on-exec.
                    (os.POSIX_SPAWN_DUP2, commands_read, 3),
                    (os.POSIX_SPAWN_DUP2, replies_write, 4),
                ],
            )
        except OSError:
            self.close()
            raise
        finally:
            os.close(commands_read)
            os.close(replies_write)
        try:
            self._attach(width, height)
        except BaseException:
            self.close()
            raise

    def _attach(self, width: int, height: int) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        reply = self.call("Target.attachToTarget", targetId=target, flatten=True)
        self._session = reply["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def open(self, url: str) -> float:
        """Navigate to ``url`` and wait for its load event.

        Returns:
            Seconds from the navigation request to the load event.
        """
        self._events.clear()
        start = time.perf_counter()
        reply = self.call("Page.navigate", url=url)
        if reply.get("errorText"):
            raise ChromiumError(f"could not open {url}: {reply['errorText']}")
        if "loaderId" in reply:  # absent when only the #fragment changed: nothing loads
            self.wait_for_event("Page.loadEventFired")
        return time.perf_counter() - start

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        reply = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise ChromiumError(f"{expression!r} raised {text}")
        return reply["result"].get("value")

    def press(self, key: str, code: str | None = None, text: str | None = None) -> None:
        """Press and release a key in the focused element, as a user would."""
        params = {"key": key, "code": code or key}
        if text is not None:
            params["text"] = text
        self.call("Input.dispatchKeyEvent", type="keyDown", **params)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=code or key)

    def screenshot(self) -> bytes:
        """PNG of the viewport (forces layout and paint of what is visible)."""
        import base64

        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one protocol command and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ChromiumError(f"{method} failed: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._note(reply)

    def wait_for_event(self, method: str) -> dict[str, Any]:
        while True:
            for index, event in enumerate(self._events):
                if event.get("method") == method:
                    return self._events.pop(index)
            self._note(self._receive())

    def close(self) -> None:
        """Stop the browser and remove its profile."""
        if self._pid:
            with contextlib.suppress(ChromiumError, OSError):
                self.call("Browser.close")
            if not self._exited_within(5.0):
                os.kill(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
            self._pid = 0
        for descriptor in (self._commands, self._replies):
            if descriptor >= 0:
                os.close(descriptor)
        self._commands = self._replies = -1
        self._profile.cleanup()

    def _exited_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while os.waitpid(self._pid, os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def log(self) -> str:
        """Chromium's own stderr, for failure messages."""
        path = Path(self._profile.name) / "chromium.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _note(self, message: dict[str, Any]) -> None:
        method = message.get("method", "")
        params = message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console_errors.append(
                details.get("exception", {}).get("description") or details.get("text", "")
            )
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            self.console_errors.append(
                " ".join(str(arg.get("value", arg.get("description", ""))) for arg in args)
            )
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.console_errors.append(f"{entry.get('text')} ({entry.get('url', '')})")
        if method:
            self._events.append(message)

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(0.0, remaining))
            if not ready:
                raise ChromiumError(
                    f"Chromium did not answer within {self.timeout:.0f} s\n{self.log()[-2000:]}"
                )
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise ChromiumError(f"Chromium exited\n{self.log()[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)


def _pipe() -> tuple[int, int]:
    """A pipe whose ends are above 4, so moving them onto 3 and 4 in the child never
    overwrites one with the other."""
    ends = []
    for end in os.pipe():
        ends.append(fcntl.fcntl(end, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(end)
    return ends[0], ends[1]
