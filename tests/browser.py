"""Headless Debian Chromium for UI tests: the rendered page's text and a screenshot."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

# As root in a sandbox with no internet: no sandboxing, no background calls home.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
WINDOW = (1400, 900)


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError("chromium not found: install Debian's `chromium` (.ci/run does)")
    return path


def _run(url: str, profile: Path, extra: list[str], wait_ms: int) -> str:
    command = [
        chromium(),
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        # Let the single-page app fetch its data and render before the dump.
        f"--virtual-time-budget={wait_ms}",
        *extra,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"chromium failed on {url}: {result.stderr[-2000:]}")
    return result.stdout


def page_text(url: str, profile: Path, wait_ms: int = 15000) -> str:
    """The visible text of `url` after its scripts ran, whitespace collapsed."""
    dom = _run(url, profile, ["--dump-dom"], wait_ms)
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def screenshot(url: str, path: Path, profile: Path, wait_ms: int = 15000) -> Path:
    _run(url, profile, [f"--screenshot={path}"], wait_ms)
    return path
