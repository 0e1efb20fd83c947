"""A local HTTP server that is not ComfyUI (answers 404 to everything), for "wrong program on
the port" tests."""
from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _NotComfy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def not_comfy_server() -> Iterator[int]:
    """Serve on a free loopback port; yields the port, closed on exit."""
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _NotComfy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()
