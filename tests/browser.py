"""Render a page in headless Chromium and measure it through the DevTools protocol (websocket-client, no Selenium):
how many images loaded, which elements overflow the viewport width, how many claim sections there are."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHECK = """JSON.stringify({
  scrollWidth: document.documentElement.scrollWidth,
  clientWidth: document.documentElement.clientWidth,
  images: Array.from(document.images).map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0,
                                                 right: Math.round(i.getBoundingClientRect().right)})),
  overflowing: Array.from(document.querySelectorAll('body *'))
      .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
      .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '')).slice(0, 20),
  sections: document.querySelectorAll('section.claim').length,
})"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class _Tab:
    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.n = 0

    def call(self, method: str, **params) -> dict:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


def measure_page(path: Path, width: int = 1280, height: int = 1000, timeout: float = 60.0) -> dict:
    """Open ``path`` at ``width`` x ``height`` CSS pixels and return :data:`CHECK`'s measurements."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("no chromium executable")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 "--disable-background-networking", "--remote-debugging-port=0",
                                 "--remote-allow-origins=*", f"--user-data-dir={profile}",
                                 f"--window-size={width},{height}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file, start = Path(profile) / "DevToolsActivePort", time.time()
            while not port_file.exists() or not port_file.read_text().strip():
                if time.time() - start > timeout or proc.poll() is not None:
                    raise TimeoutError("Chromium did not open its DevTools port")
                time.sleep(0.2)
            port = port_file.read_text().split()[0]
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            tab = _Tab(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
            tab.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                     mobile=False)
            tab.call("Page.navigate", url=Path(path).resolve().as_uri())
            start = time.time()
            while tab.evaluate("document.readyState") != "complete":
                if time.time() - start > timeout:
                    raise TimeoutError(f"{path} did not finish loading")
                time.sleep(0.2)
            return json.loads(tab.evaluate(CHECK))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
