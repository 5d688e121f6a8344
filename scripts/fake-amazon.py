#!/usr/bin/env python3
"""A minimal fake of what the service calls at Amazon, for scripts/contract-fuzz: the Login
with Amazon token endpoint and the few SP-API operations the service makes itself, plus a
webhook receiver. Every answer is a success, so the fuzzer reaches the service's success
paths (authorize, test, restricted data tokens, client secret rotation, website
authorization's code exchange). Listens on 127.0.0.1 only.

  POST /auth/o2/token                              LWA: a fresh `Atza|` token (and, for
                                                   grant_type=authorization_code, a new
                                                   `Atzr|` refresh token)
  GET  /sellers/v1/marketplaceParticipations       one marketplace (Germany)
  GET  /vendor/orders/v1/purchaseOrders            no orders
  POST /tokens/2021-03-01/restrictedDataToken      a fresh `Atz.sprdt|` token
  POST /applications/2023-11-30/clientSecret       204 (the secret would follow by notification)
  POST /hooks                                      204 (webhook deliveries)

Usage: fake-amazon.py PORT"""
import itertools
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

counter = itertools.count()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/sellers/v1/marketplaceParticipations":
            self.answer(200, {"payload": [{
                "marketplace": {"id": "A1PA6795UKMFR9", "name": "Amazon.de", "countryCode": "DE",
                                "defaultCurrencyCode": "EUR", "defaultLanguageCode": "de_DE",
                                "domainName": "www.amazon.de"},
                "participation": {"isParticipating": True, "hasSuspendedListings": False},
            }]})
        elif path == "/vendor/orders/v1/purchaseOrders":
            self.answer(200, {"payload": {"pagination": {}, "orders": []}})
        else:
            self.answer(404, {"errors": [{"code": "NotFound", "message": "no such fake route"}]})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        path = urlsplit(self.path).path
        n = next(counter)
        if path == "/auth/o2/token":
            form = parse_qs(body.decode(errors="replace"))
            token = {"access_token": f"Atza|contract-fuzz-{n}", "token_type": "bearer",
                     "expires_in": 3600}
            if form.get("grant_type") == ["authorization_code"]:
                token["refresh_token"] = f"Atzr|contract-fuzz-{n}"
            self.answer(200, token)
        elif path == "/tokens/2021-03-01/restrictedDataToken":
            self.answer(200, {"restrictedDataToken": f"Atz.sprdt|contract-fuzz-{n}",
                              "expiresIn": 3600})
        elif path in ("/applications/2023-11-30/clientSecret", "/hooks"):
            self.answer(204)
        else:
            self.answer(404, {"errors": [{"code": "NotFound", "message": "no such fake route"}]})

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
