"""A file server on 127.0.0.1 for the download tests.

    python loopback_http_server.py ROOT PORT REQUEST_LOG

GET /NAME           ROOT/NAME; `Range: bytes=N-` (or N-M) gets 206 with Content-Range
GET /cut/N/NAME     the same, but the connection drops at byte N of the file: the headers
                    announce the full length, the body stops short (a request starting at
                    or after byte N is served whole)
GET /norange/NAME   ROOT/NAME, always 200: a server that cannot resume
GET /_ready         200, to tell the test the server is up
Each file request appends "PATH RANGE" to REQUEST_LOG (RANGE is "-" without a header).
"""

from __future__ import annotations

import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROUTE = re.compile(r"/(?:(?P<cut>cut/(?P<at>\d+))/|(?P<norange>norange)/)?(?P<name>[^/].*)")
RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class FileHandler(BaseHTTPRequestHandler):
    root: Path
    request_log: Path

    def do_GET(self) -> None:
        if self.path == "/_ready":
            self._send(200, b"ok", {})
            return
        route = ROUTE.fullmatch(self.path)
        file = self.root / route["name"] if route else None
        with self.request_log.open("a", encoding="utf-8") as log:
            log.write(f"{self.path} {self.headers.get('Range', '-')}\n")
        if file is None or not file.is_file():
            self._send(404, b"not found", {})
            return
        data = file.read_bytes()
        start, end = self._range(len(data)) if not route["norange"] else (None, None)
        if start is None:
            body, status, headers = data, 200, {}
            start = 0
        elif start >= len(data):
            self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            return
        else:
            body, status = data[start : end + 1], 206
            headers = {"Content-Range": f"bytes {start}-{start + len(body) - 1}/{len(data)}"}
        cut_at = int(route["at"]) if route["cut"] else None
        keep = len(body) if cut_at is None or start >= cut_at else cut_at - start
        self._send(status, body, headers, keep)

    def _range(self, size: int) -> tuple[int | None, int | None]:
        match = RANGE.fullmatch(self.headers.get("Range", ""))
        if not match:
            return None, None
        return int(match[1]), int(match[2]) if match[2] else size - 1

    def _send(self, status: int, body: bytes, headers: dict, keep: int | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body[:keep])
        self.wfile.flush()
        self.close_connection = True


def main() -> None:
    root, port, request_log = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    FileHandler.root, FileHandler.request_log = root, request_log
    ThreadingHTTPServer(("127.0.0.1", port), FileHandler).serve_forever()


if __name__ == "__main__":
    main()
