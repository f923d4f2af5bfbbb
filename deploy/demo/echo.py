"""A sample backend for the demo and the tests: answers every request with its own name
and what it received, as JSON. Standard library only."""

import json
import os
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("ECHO_NAME", socket.gethostname())
PORT = int(os.environ.get("ECHO_PORT", "8000"))
# Paths answered 500 (the tests' failing HTTP health check), comma-separated.
FAILING = {p for p in os.environ.get("ECHO_FAIL_PATHS", "").split(",") if p}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/stream/"):
            # /stream/<seconds>: a slow response, one chunk a second (long-lived requests).
            seconds = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(seconds):
                chunk = f"{NAME} {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(1)
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps(
            {"backend": NAME, "path": self.path, "headers": dict(self.headers.items())}
        ).encode()
        self.send_response(500 if self.path in FAILING else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    # The default listen backlog of 5 drops SYNs under load, which would show up as 1 s
    # connect retransmits in the benchmarks and be blamed on the load balancer.
    request_queue_size = 1024
    daemon_threads = True


if __name__ == "__main__":
    Server(("", PORT), Handler).serve_forever()
