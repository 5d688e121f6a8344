#!/usr/bin/env python3
"""A cheap Login-with-Amazon token endpoint for the benchmark, so that LWA is never what
is measured. Every refresh grant (`POST /auth/o2/token`) gets a fresh `Atza|` access
token of about 400 characters, as Amazon's are, living an hour. `GET /calls` answers
`{"calls": N, "distinct": M}`: how many grants it answered, and for how many distinct
refresh tokens, so the benchmark can check "one LWA call per connection".

asyncio with keep-alive and no framework: one core answers tens of thousands of grants a
second. Usage: fake-lwa.py PORT"""
import asyncio
import hashlib
import json
import sys
from urllib.parse import parse_qs

calls = 0
refresh_tokens = set()
# 400 characters in all with the `Atza|` prefix and the per-call part.
PADDING = "IwEBI" + "x" * 355


def grant(form: bytes) -> bytes:
    global calls
    calls += 1
    refresh = parse_qs(form.decode("ascii", "replace")).get("refresh_token", [""])[0]
    refresh_tokens.add(hashlib.sha256(refresh.encode()).digest())
    unique = hashlib.sha256(f"{calls}:{refresh}".encode()).hexdigest()[:35]
    return json.dumps({
        "access_token": f"Atza|{unique}{PADDING}",
        "token_type": "bearer",
        "expires_in": 3600,
    }).encode()


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            form = await reader.readexactly(length) if length else b""
            if request_line.startswith("GET /calls"):
                body = json.dumps({"calls": calls, "distinct": len(refresh_tokens)}).encode()
            else:
                body = grant(form)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()


asyncio.run(main())
