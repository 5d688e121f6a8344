#!/usr/bin/env python3
"""A minimal Login-with-Amazon token endpoint for the benchmark: every refresh grant gets
a fresh `Atza|` token that lives an hour, and writes how many it issued to COUNT_FILE.
Usage: fake-lwa.py PORT COUNT_FILE"""
import itertools
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counter = itertools.count()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        n = next(counter)
        with open(sys.argv[2], "w") as count_file:
            count_file.write(str(n + 1))
        body = json.dumps({
            "access_token": f"Atza|bench-{n}",
            "token_type": "bearer",
            "expires_in": 3600,
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
