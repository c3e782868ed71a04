#!/usr/bin/env python3
"""A local stand-in for the remote APIs of the quickstart: prints every
request it gets (method, path, the headers that matter, body) and answers
200. Standard library only.

    python3 examples/quickstart/receiver.py [PORT]   # default 9000

Set RECEIVER_FAIL_FIRST=N to answer the first N requests of each record
with 503, to watch repeaterd retry.
"""

import http.server
import json
import os
import sys
from collections import Counter

SHOWN_HEADERS = ("content-type", "idempotency-key", "authorization",
                 "webhook-id", "webhook-timestamp", "webhook-signature")
FAIL_FIRST = int(os.environ.get("RECEIVER_FAIL_FIRST", "0"))
seen = Counter()


class Handler(http.server.BaseHTTPRequestHandler):
    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        key = self.headers.get("idempotency-key", "")
        seen[key] += 1
        status = 503 if seen[key] <= FAIL_FIRST else 200
        print(f"--> {self.command} {self.path}  (answer {status})")
        for name in SHOWN_HEADERS:
            if name in self.headers:
                print(f"    {name}: {self.headers[name]}")
        try:
            print("    " + json.dumps(json.loads(body), indent=2).replace("\n", "\n    "))
        except ValueError:
            print("    " + body.decode("utf-8", "replace"))
        sys.stdout.flush()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}' if status == 200 else b'{"busy": true}')

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET = handle_any

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(f"receiver listening on http://127.0.0.1:{port}")
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
