"""A real browser for the tests: Debian's headless ``chromium`` driven over the DevTools protocol.

``find_or_install_chromium()`` returns the binary, installing Debian's package when we are root and apt
works (the reason otherwise). ``open_page()`` loads a page, waits for its load event, and returns what a
person would see (the page's rendered text, the boxes of chosen elements) and every script error and
console error the page caused, plus a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INSTALL_TIMEOUT = 900


def find_or_install_chromium(log: Path) -> tuple[str | None, str]:
    """(path to chromium, "") or (None, why not)."""
    found = shutil.which("chromium")
    if found:
        return found, ""
    if os.geteuid() != 0:
        return None, "chromium is not installed and we are not root (apt-get install chromium)"
    if not shutil.which("apt-get"):
        return None, "chromium is not installed and this system has no apt-get"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        try:
            # apt waits for another apt (its own lock) at most 5 minutes; the whole install at most 15.
            done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", "chromium"],
                                  stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT,
                                  env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except subprocess.TimeoutExpired:
            return None, f"installing chromium took over {INSTALL_TIMEOUT}s (log: {log})"
    found = shutil.which("chromium")
    if done.returncode != 0 or not found:
        return None, f"apt-get install chromium failed with exit {done.returncode} (log: {log})"
    return found, ""


@dataclass
class PageView:
    text: str  # document.body.innerText: the text as rendered (nothing hidden)
    elements: list[dict[str, Any]]  # for each element matched by the selector: its box, text and attributes
    errors: list[str] = field(default_factory=list)  # uncaught exceptions and console/log errors
    screenshot: bytes = b""
    title: str = ""


_INSPECT = """(() => {
  const pick = (el) => { const r = el.getBoundingClientRect(); const style = getComputedStyle(el);
    return {tag: el.tagName.toLowerCase(), text: el.innerText, width: r.width, height: r.height, top: r.top + scrollY,
            visible: r.width > 0 && r.height > 0 && style.visibility !== 'hidden' && style.display !== 'none',
            attrs: Object.fromEntries([...el.attributes].map(a => [a.name, a.value])),
            svgs: [...el.querySelectorAll('svg')].map(s => { const b = s.getBoundingClientRect(); return {width: b.width, height: b.height}; })}; };
  return JSON.stringify({text: document.body.innerText, title: document.title,
                         elements: [...document.querySelectorAll(SELECTOR)].map(pick)});
})()"""


class _Cdp:
    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id, self.events = ws, 0, []
        self.pending: dict[int, asyncio.Future] = {}

    async def pump(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            else:
                self.events.append(data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})


def _errors(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for event in events:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append("exception: " + (details.get("exception", {}).get("description") or details.get("text", "")))
        elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif event.get("method") == "Log.entryAdded" and params["entry"].get("level") == "error":
            found.append(f"log ({params['entry'].get('source')}): {params['entry'].get('text')} {params['entry'].get('url', '')}".strip())
    return found


async def _open(chromium: str, url: str, selector: str, width: int, height: int) -> PageView:
    import aiohttp

    # Not TemporaryDirectory's own cleanup: chromium's helper processes can still be writing the profile when the
    # main process has exited ("Directory not empty: 'Default'"); the whole process group is ended first.
    profile = tempfile.mkdtemp(prefix="tfship-chromium-")
    process = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                                "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
                                f"--window-size={width},{height}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start its DevTools endpoint (exit {process.poll()})")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                page = next(t for t in await response.json() if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = _Cdp(ws)
                pump = asyncio.create_task(cdp.pump())
                for domain in ("Page", "Runtime", "Log"):
                    await cdp.call(f"{domain}.enable")
                await cdp.call("Page.navigate", url=url)
                deadline = time.monotonic() + 30
                while not any(e.get("method") == "Page.loadEventFired" for e in cdp.events):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{url}: no load event within 30 s")
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.2)  # late console messages
                expression = _INSPECT.replace("SELECTOR", json.dumps(selector))
                seen = json.loads((await cdp.call("Runtime.evaluate", expression=expression, returnByValue=True))["result"]["value"])
                shot = await cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                pump.cancel()
        return PageView(seen["text"], seen["elements"], _errors(cdp.events), base64.b64decode(shot["data"]), seen["title"])
    finally:
        _end_group(process)
        for _ in range(50):
            shutil.rmtree(profile, ignore_errors=True)
            if not os.path.exists(profile):
                break
            time.sleep(0.1)


def _end_group(process: subprocess.Popen) -> None:
    """End chromium and every helper it started (its own session and process group)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # helpers that outlived the main process, or a main process that hung
    except ProcessLookupError:
        pass
    process.wait()


def open_page(chromium: str, path: Path, selector: str = "figure", width: int = 1280, height: int = 1600) -> PageView:
    """Load ``path`` in headless chromium; what it shows and what went wrong on the way."""
    return asyncio.run(_open(chromium, Path(path).resolve().as_uri(), selector, width, height))
