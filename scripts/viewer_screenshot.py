"""Check ns-viewer for real: start it on a run, open the page in headless Chromium, let the viewer
render the Gaussians, save a screenshot, then drag the camera and check that a new view is
rendered.

    python scripts/viewer_screenshot.py --load-config RUN/config.yml --output viewer.png

Needs `chromium` (Debian package) on PATH. Prints a JSON line with what it measured and exits 0
when the screenshots show a non-empty render that changes when the camera moves, 1 when not,
2 when something could not be started.

How the render is recognized: the viewer paints our render over the whole 3D canvas. Without a
render the canvas is flat (background, grid lines); with one, many distinct colors cover a good
share of it. The second check drags the camera and requires the canvas to change.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

warnings.filterwarnings("ignore", category=DeprecationWarning, module="websockets")
warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*context manager.*")

WINDOW = (1200, 800)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except Exception:
            pass
        time.sleep(0.5)
    return False


class DevTools:
    """A minimal Chrome DevTools Protocol client (one page target) over `websockets`."""

    def __init__(self, port: int):
        from websockets.sync.client import connect

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.loads(response.read())
        page = next(t for t in targets if t.get("type") == "page")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20)  # noqa
        self.next_id = 0

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.time() + timeout
        while time.time() < deadline:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.time())))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
        raise TimeoutError(method)

    def screenshot(self, attempts: int = 20) -> Image.Image:
        for attempt in range(attempts):
            try:
                data = self.call("Page.captureScreenshot", format="png")["data"]
                return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
            except RuntimeError:  # e.g. "Not attached to an active page" while a navigation commits
                if attempt == attempts - 1:
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def render_resolution(self) -> tuple[int, int] | None:
        """The viewer's "Resolution: W x H px" readout of the last render (None before one)."""
        import re

        try:
            text = self.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)[
                "result"
            ].get("value", "")
        except RuntimeError:
            return None
        match = re.search(r"Resolution:\s*(\d+)\s*[x\u00d7]\s*(\d+)", text or "")
        return (int(match.group(1)), int(match.group(2))) if match else None

    def drag(self, start: tuple[int, int], end: tuple[int, int], steps: int = 12) -> None:
        x0, y0 = start
        x1, y1 = end
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x0, y=y0)
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y0, button="left", buttons=1, clickCount=1)
        for i in range(1, steps + 1):
            x, y = x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps
            self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left", buttons=1)
            time.sleep(0.03)
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x1, y=y1, button="left", buttons=1, clickCount=1)

    def close(self) -> None:
        try:
            self.socket.close()
        except Exception:
            pass


def canvas_region(image: Image.Image) -> np.ndarray:
    """The 3D view (left of the viewer's control panel), as float RGB [H, W, 3]."""
    array = np.asarray(image, dtype=np.float32)
    h, w = array.shape[:2]
    return array[int(0.1 * h) : int(0.9 * h), int(0.05 * w) : int(0.6 * w)]


def render_stats(image: Image.Image) -> dict:
    """How much of the 3D view is covered by something other than flat background colors: the
    share of pixels outside the 3 most common quantized colors, and the color spread."""
    region = canvas_region(image)
    quantized = (region // 8).astype(np.int32)
    keys = quantized[..., 0] * 1024 + quantized[..., 1] * 32 + quantized[..., 2]
    values, counts = np.unique(keys, return_counts=True)
    top = values[np.argsort(counts)[-3:]]
    covered = float(1.0 - np.isin(keys, top).mean())
    return {"covered": round(covered, 4), "colors": int(len(values)), "std": round(float(region.std()), 2)}


def looks_rendered(stats: dict) -> bool:
    return stats["covered"] > 0.05 and stats["colors"] > 50


def difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(canvas_region(a) - canvas_region(b)).mean())


def wait_for_render(
    tools: DevTools, timeout: float, previous: Image.Image | None = None, min_width: int = 256
) -> tuple[Image.Image, tuple[int, int] | None]:
    """Poll screenshots until the canvas shows a full-resolution render (different from
    `previous` when given) that is still there a second later; returns the last screenshot and
    the resolution read with it, either way."""
    deadline = time.time() + timeout

    def ready(shot: Image.Image, resolution: tuple[int, int] | None) -> bool:
        full = looks_rendered(render_stats(shot)) and resolution is not None and resolution[0] >= min_width
        return full and (previous is None or difference(previous, shot) >= 2.0)

    while True:
        shot, resolution = tools.screenshot(), tools.render_resolution()
        if ready(shot, resolution):
            # The client may re-send its camera (layout settling, thumbnails loading), which starts
            # another round of low-resolution previews: only a render that stays counts.
            time.sleep(1.0)
            shot, resolution = tools.screenshot(), tools.render_resolution()
            if ready(shot, resolution):
                return shot, resolution
        if time.time() > deadline:
            return shot, resolution
        time.sleep(1.0)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def stop(process: subprocess.Popen | None) -> None:
    """End a process group this script started (and only that)."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except Exception:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except Exception:
            pass


def run(load_config: Path, output: Path, wait: float = 240.0, settle: float = 8.0) -> dict:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium not found: apt-get install chromium (see the Makefile's setup)")
    bin_dir = Path(sys.executable).parent
    ns_viewer = shutil.which("ns-viewer", path=str(bin_dir)) or "ns-viewer"
    port, debug_port = free_port(), free_port()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    log = open(output.with_suffix(".viewer.log"), "w")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    viewer = chrome = tools = None
    profile = tempfile.mkdtemp(prefix="viewer-shot-")
    result: dict = {"port": port}
    try:
        viewer = subprocess.Popen(
            [
                ns_viewer,
                "--load-config",
                str(load_config),
                "--viewer.websocket-port",
                str(port),
                "--viewer.websocket-host",
                "127.0.0.1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        if not wait_http(f"http://127.0.0.1:{port}/", wait, viewer):
            raise RuntimeError(f"ns-viewer did not come up on port {port} (see {log.name})")
        chrome = subprocess.Popen(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                "--ignore-gpu-blocklist",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--remote-debugging-port={debug_port}",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_http(f"http://127.0.0.1:{debug_port}/json/version", 60, chrome):
            raise RuntimeError("chromium did not start")
        tools = DevTools(debug_port)
        tools.call("Page.enable")
        tools.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
        time.sleep(3.0)
        # The render arrives once the client has connected and sent its camera; while the camera
        # moves the viewer sends small previews, then the full render (max_res, 512 px): poll.
        first, resolution = wait_for_render(tools, wait)
        first.save(output)
        result["first"] = render_stats(first) | {"resolution": resolution}
        # Move the camera (orbit drag over the canvas) and wait for the new full render.
        w, h = WINDOW
        tools.drag((int(0.3 * w), int(0.5 * h)), (int(0.36 * w), int(0.47 * h)))  # small: the scene stays in view
        time.sleep(settle)
        second, resolution = wait_for_render(tools, wait, previous=first)
        second.save(output.with_name(output.stem + "_moved" + output.suffix))
        result["moved"] = render_stats(second) | {"resolution": resolution}
        result["change"] = round(difference(first, second), 2)
        result["ok"] = looks_rendered(result["first"]) and looks_rendered(result["moved"]) and result["change"] >= 2.0
        return result
    finally:
        if tools is not None:
            tools.close()
        stop(chrome)
        stop(viewer)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load-config", type=Path, required=True, help="a run's config.yml")
    parser.add_argument("--output", type=Path, default=Path("viewer.png"))
    parser.add_argument("--wait", type=float, default=240.0, help="seconds to wait for the viewer and for a render")
    parser.add_argument("--settle", type=float, default=8.0)
    args = parser.parse_args(argv)
    # SIGTERM (e.g. a test timeout) still runs the cleanup that stops the viewer and the browser.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run(args.load_config, args.output, args.wait, args.settle)
    except (FileNotFoundError, RuntimeError, TimeoutError) as error:
        print(json.dumps({"ok": False, "error": str(error)}))
        return 2
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
