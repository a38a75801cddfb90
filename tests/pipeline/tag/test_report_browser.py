"""The report in a real headless Chromium (Debian's package, driven over --remote-debugging-pipe with the stdlib):
a 30-tweet output fits in 8,000 px at 1,400 px wide, logs no console error, loads nothing, and its screenshot has content.

Run by hand to look at a page: `python tests/pipeline/tag/test_report_browser.py OUT/_report.html shot.png`.
"""
from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--remote-debugging-pipe"]


class _Pipe:
    """CDP over fds 3 (to the browser) and 4 (from it): JSON messages separated by NUL bytes."""

    def __init__(self, write_fd: int, read_fd: int, timeout: float):
        self.w, self.r, self.buf, self.n, self.events = write_fd, read_fd, b"", 0, []
        self.deadline = time.monotonic() + timeout

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        reply = self.wait(lambda m, i=self.n: m.get("id") == i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait(self, pred) -> dict:
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                m = json.loads(raw)
                if pred(m):
                    return m
                self.events.append(m)
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buf += chunk


def render(page: Path, width: int = 1400, timeout: float = 90) -> dict:
    """Load `page` in headless Chromium at `width` css px: its content height, console errors, requests and a PNG."""
    to_browser, from_browser = os.pipe(), os.pipe()
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser[0], from_browser[1])]
    for fd in (to_browser[0], from_browser[1]):
        os.close(fd)

    def fds() -> None:  # in the child: the browser reads fd 3 and writes fd 4
        os.dup2(high[0], 3)
        os.dup2(high[1], 4)

    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},1000",
                                 "about:blank"], preexec_fn=fds, close_fds=False, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in high:
            os.close(fd)
        cdp = _Pipe(to_browser[1], from_browser[0], timeout)
        try:
            target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            s = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                cdp.call(f"{domain}.enable", session=s)
            cdp.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": 1000, "deviceScaleFactor": 1,
                                                            "mobile": False}, s)
            cdp.call("Page.navigate", {"url": page.resolve().as_uri()}, s)
            cdp.wait(lambda m: m.get("method") == "Page.loadEventFired")
            size = cdp.call("Page.getLayoutMetrics", session=s)["cssContentSize"]
            shot = cdp.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
                "x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1}}, s)["data"]
            cdp.call("Browser.close")
            proc.wait(10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # our own session's group: the browser and its helpers
                proc.wait()
            os.close(to_browser[1])
            os.close(from_browser[0])
    events = cdp.events
    errors = [e["params"]["entry"]["text"] for e in events if e.get("method") == "Log.entryAdded"
              and e["params"]["entry"]["level"] == "error"]
    errors += [str(e["params"]) for e in events if e.get("method") == "Runtime.exceptionThrown"
               or e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")]
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return {"width": size["width"], "height": size["height"], "errors": errors, "requests": requests,
            "png": base64.b64decode(shot)}


def _check(page: Path, shot: Path) -> dict:
    from PIL import Image

    got = render(page)
    shot.write_bytes(got["png"])
    assert got["errors"] == [], got["errors"]
    fetched = [u for u in got["requests"] if not u.startswith("data:image/jpeg;base64,")]
    assert fetched == [page.resolve().as_uri()], fetched  # nothing else loaded: images are data URIs
    assert got["width"] == 1400 and got["height"] <= 8000, (got["width"], got["height"])
    with Image.open(io.BytesIO(got["png"])) as img:
        assert img.size == (1400, round(got["height"]))
        small = img.convert("RGB").resize((140, max(1, img.height // 10)))
        colours = small.getcolors(1 << 20) or []
    assert len(colours) > 200, "the screenshot is (nearly) blank"
    return got


def _sample_output(root: Path, n: int = 30) -> Path:
    """A worst-case 30-tweet output: every tweet long, with an image, 3 + 3 crops and 4 routed entities; rejects."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from helpers import draw_images

    from pipeline.tag.manifest import REJECTS_NAME, data_folder
    from pipeline.tag.parquet_parts import SCHEMA

    images = draw_images(root / "dumps", 6)
    words = [("Obama", "PER"), ("NBA", "ORG"), ("nba", "ORG"), ("London", "LOC"), ("World Cup", "MISC"),
             ("John Smith", "PER"), ("Paris", "LOC"), ("Apple", "ORG")]
    rows = []
    for i in range(n):
        ents, text = [], f"RT @fan{i}: "
        for k in range(4):
            w, t = words[(i + 3 * k) % len(words)]
            a = ((i * 7 + k * 3) % 10) / 10
            ents.append({"text": w, "type": t, "start_char": len(text), "end_char": len(text) + len(w),
                         "start_token": k, "end_token": k + 1, "score": round(0.3 + 0.7 * ((i * 13 + k * 5) % 17) / 17,
                         3), "routing_orig": a, "routing_grounding": (1 - a) * 0.6, "routing_rcnn": (1 - a) * 0.4})
            text += w + " is at the game today with friends and family, what a night " + ("#gameday " if k else "")
        img = images[i % len(images)]
        rows.append({"id": f"10000{i}", "text": text + " http://t.co/x1", "tokens": text.split(), "entities": ents,
                     "image_used": True, "model_id": "m1", "line": i + 1, "source": str(root / "dumps/d.jsonl"),
                     "image": img, "crops": [img.replace(".jpg", f"_crop{c % 2}.png") for c in range(3)],
                     "rcnn_crops": [img.replace(".jpg", f"_crop{c % 2}.png") for c in range(3)]})
    out = root / "out"
    data_folder(out).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata({"rpihmif.model_id": "m1"})),
                   data_folder(out) / "p.parquet")
    (out / REJECTS_NAME).write_text("".join(json.dumps({"file": "d.jsonl", "line": i, "reason": r}) + "\n"
                                            for i, r in enumerate(["bad JSON (x)", "no text", "bad JSON (y)"])))
    return out


pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (Debian: "
                                                                              "apt-get install chromium)")]


@pytest.mark.timeout(300)
def test_a_worst_case_30_tweet_report_fits_and_renders_cleanly(tmp_path):
    from pipeline.tag.report import write_report

    page = write_report(_sample_output(tmp_path))
    got = _check(page, tmp_path / "shot.png")
    print(f"worst-case 30-tweet page: {got['height']:.0f} px at 1400 px; screenshot {tmp_path / 'shot.png'}")


@pytest.mark.timeout(300)
def test_a_tag_corpus_output_of_30_tweets_renders_cleanly(tag_env, tmp_path):
    from helpers import TAG_BAD_LINES, tag_config, tag_dump

    from pipeline.tag.report import write_report
    from pipeline.tag.stage import run_tag

    run_tag([tag_dump(tag_env, "browser.jsonl", 30, bad=TAG_BAD_LINES)], tag_config(tag_env, tmp_path / "out"))
    _check(write_report(tmp_path / "out"), tmp_path / "shot.png")


if __name__ == "__main__":
    result = render(Path(sys.argv[1]))
    Path(sys.argv[2]).write_bytes(result.pop("png"))
    print(json.dumps({k: result[k] for k in ("width", "height", "errors")}))
