"""``python -m refserver``: serve one instance on ``LISTEN_ADDRESS:PORT`` (threads; stops on SIGTERM)."""
from __future__ import annotations

import logging
import os
import signal
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from refserver.app import Config, Server


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # one line per request on stdout, kept by the supervisor
        sys.stdout.write(f"{self.address_string()} {format % args}\n")
        sys.stdout.flush()


def _stop(signum, frame):
    raise KeyboardInterrupt  # leaves serve_forever; the socket is closed on the way out


def main() -> None:
    config = Config.from_environment()
    server = Server(config)
    address, port = os.environ.get("LISTEN_ADDRESS", "127.0.0.1"), int(os.environ.get("PORT", "8080"))
    # Bound first (a server that cannot have its port exits before it changes its database), listening only once
    # its schema is applied: a port that accepts connections is a server that is ready.
    httpd = ThreadingWSGIServer((address, port), QuietHandler, bind_and_activate=False)
    httpd.server_bind()
    server.start()
    httpd.server_activate()
    httpd.set_app(server)
    signal.signal(signal.SIGTERM, _stop)
    print(f"refserver {config.name} {config.version} on http://{address}:{port}/"
          + (f" ({server.startup_problem})" if server.startup_problem else ""), flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
