"""Test helper: a PNG of a web page from headless Chromium (the Flink web UI test)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Optional


def chromium_screenshot(url: str, width: int = 1600, height: int = 1000,
                        settle_s: float = 6.0, browser: Optional[str] = None,
                        timeout_s: float = 60.0) -> bytes:
    """PNG bytes of ``url`` after ``settle_s`` seconds of real time, from headless Chromium
    over the DevTools protocol on a pipe (``--remote-debugging-pipe``: NUL-separated JSON on
    file descriptors 3 and 4, no extra packages). Unlike ``--screenshot`` with a virtual-time
    budget, this cannot hang on a single-page app that keeps polling its server."""
    import base64
    import shutil
    import tempfile

    browser = browser or shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise RuntimeError("chromium not found (Debian: apt-get install chromium)")
    import fcntl

    def high(fd: int) -> int:  # out of the way of 3 and 4, which the child needs
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return moved

    to_chrome_r, to_chrome_w = map(high, os.pipe())
    from_chrome_r, from_chrome_w = map(high, os.pipe())

    def child_fds():
        os.dup2(to_chrome_r, 3)
        os.dup2(from_chrome_w, 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)

    with tempfile.TemporaryDirectory(prefix="streamrank-chromium-") as profile:
        # No background networking: Chromium's own update/sync lookups stall offline.
        proc = subprocess.Popen(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=child_fds,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        buf = bytearray()
        deadline = time.monotonic() + timeout_s
        next_id = [0]

        def call(method: str, params: Optional[dict] = None,
                 session: Optional[str] = None) -> dict:
            next_id[0] += 1
            msg = {"id": next_id[0], "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            os.write(to_chrome_w, json.dumps(msg).encode() + b"\0")
            while True:
                while b"\0" not in buf:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"chromium: no answer to {method}")
                    import select

                    ready, _, _ = select.select([from_chrome_r], [], [], 1.0)
                    if ready:
                        chunk = os.read(from_chrome_r, 1 << 20)
                        if not chunk:
                            raise RuntimeError("chromium exited")
                        buf.extend(chunk)
                raw, _, rest = bytes(buf).partition(b"\0")
                buf[:] = rest
                reply = json.loads(raw)
                if reply.get("id") == next_id[0]:
                    if "error" in reply:
                        raise RuntimeError(f"chromium {method}: {reply['error']}")
                    return reply.get("result", {})

        try:
            target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = call("Target.attachToTarget",
                           {"targetId": target, "flatten": True})["sessionId"]
            call("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                 session)
            call("Page.enable", {}, session)
            call("Page.navigate", {"url": url}, session)
            time.sleep(settle_s)
            data = call("Page.captureScreenshot", {"format": "png"}, session)["data"]
            try:
                call("Browser.close")
            except RuntimeError:  # it may exit before answering
                pass
            return base64.b64decode(data)
        finally:
            os.close(to_chrome_w)
            os.close(from_chrome_r)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
