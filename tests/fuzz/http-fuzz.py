#!/usr/bin/env python3
"""tests/fuzz/http-fuzz.py: a black-box fuzzer for a running `quill serve`.

    http-fuzz.py PORT SECONDS

Sends mutated HTTP/1.x requests over raw sockets to 127.0.0.1:PORT for SECONDS: request
bodies from tests/corpus/request/ (byte flips, insertions, deletions, repeats, deep nesting),
random methods and paths, lying or huge Content-Length, chunked bodies, bad versions,
pipelined pairs, bodies cut short, clients that never read and sockets left open. Every 500
requests it checks GET /health answers 200, and at the end prints the count and /health's
status line. Run it against an ASan build with a small model and read the server's stderr:

    build-asan/quill mkmodel --shape tiny -o /tmp/tiny.gguf
    build-asan/quill serve --model /tmp/tiny.gguf --port 18777 --served-model-name m \
        --threads 1 --max-model-len 128 2> serve.log &
    tests/fuzz/http-fuzz.py 18777 240; kill -TERM %1; grep -c AddressSanitizer serve.log
"""
import json
import os
import random
import socket
import sys
import time

if len(sys.argv) != 3:
    raise SystemExit(__doc__)
HOST, PORT = "127.0.0.1", int(sys.argv[1])
DUR = float(sys.argv[2])
rng = random.Random(1)
bodies = []
d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus", "request")
for f in os.listdir(d):
    bodies.append(open(os.path.join(d, f), "rb").read()[1:])
paths = [b"/v1/completions", b"/v1/chat/completions", b"/tokenize", b"/detokenize", b"/v1/models",
         b"/health", b"/ready", b"/metrics", b"/v1/models/m", b"/", b"//v1/completions", b"/v1/completions?x=1",
         b"/v1/../v1/completions", b"/%00", b"/v1/completions%2F"]
methods = [b"POST", b"GET", b"PUT", b"DELETE", b"OPTIONS", b"HEAD", b"PATCH", b"POSTX", b""]
def mutate(b):
    b = bytearray(b)
    for _ in range(rng.randint(0, 6)):
        op = rng.randint(0, 5)
        if op == 0 and b: b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1: b[rng.randrange(len(b)+1):0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and b: i = rng.randrange(len(b)); del b[i:i+rng.randint(1, 16)]
        elif op == 3: b += rng.choice([b'"max_tokens":5', b'"stream":true', b'"n":3', b'\xff\xfe', b'\\u0000', b'{' * 50, b'[' * 300])
        elif op == 4 and b: i = rng.randrange(len(b)); b[i:i] = b[i:i+rng.randint(1, 40)] * rng.randint(1, 20)
    return bytes(b)
def request():
    body = mutate(rng.choice(bodies))
    if rng.random() < 0.3:
        try:
            j = json.loads(rng.choice(bodies)); j["max_tokens"] = rng.choice([1, 2, 5]); j["stream"] = rng.random() < 0.5
            body = json.dumps(j).encode()
        except Exception: pass
    m = rng.choice(methods); p = rng.choice(paths)
    hdrs = [b"Host: x"]
    chunked = rng.random() < 0.2
    if chunked: hdrs.append(b"Transfer-Encoding: chunked")
    else:
        cl = len(body) if rng.random() < 0.85 else rng.choice([0, len(body) + 10, 99999999999, -1])
        hdrs.append(b"Content-Length: " + str(cl).encode())
    if rng.random() < 0.5: hdrs.append(b"Content-Type: application/json")
    if rng.random() < 0.1: hdrs.append(b"Authorization: Bearer " + os.urandom(8).hex().encode())
    if rng.random() < 0.1: hdrs.append(b"Connection: " + rng.choice([b"close", b"keep-alive", b"upgrade"]))
    if rng.random() < 0.05: hdrs.append(b"X-" * 1000 + b": y")
    head = m + b" " + p + b" HTTP/1." + rng.choice([b"1", b"0", b"1", b"9"]) + b"\r\n" + b"\r\n".join(hdrs) + b"\r\n\r\n"
    if chunked:
        data = b"".join(b"%x\r\n" % len(body[i:i+7]) + body[i:i+7] + b"\r\n" for i in range(0, len(body), 7)) + b"0\r\n\r\n"
    else: data = body
    raw = head + data
    if rng.random() < 0.2: raw = mutate(raw)
    return raw
def health():
    s = socket.create_connection((HOST, PORT), timeout=10)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    r = b""
    while True:
        c = s.recv(4096)
        if not c: break
        r += c
    s.close()
    return r.split(b"\r\n")[0]
t0 = time.time(); n = 0; socks = []
while time.time() - t0 < DUR:
    try:
        s = socket.create_connection((HOST, PORT), timeout=5)
        raw = request()
        if rng.random() < 0.3:  # pipelined second request
            raw += request()
        cut = len(raw) if rng.random() < 0.8 else rng.randrange(len(raw) + 1)
        s.sendall(raw[:cut])
        if rng.random() < 0.15:
            socks.append(s)  # leave it open (slow client)
            if len(socks) > 40: socks.pop(0).close()
        else:
            s.settimeout(rng.choice([0.05, 0.5, 3]))
            try:
                while s.recv(65536): pass
            except Exception: pass
            s.close()
        n += 1
    except Exception as e:
        print("client error", e)
    if n % 500 == 0:
        h = health()
        if b"200" not in h: print("HEALTH", h); break
for s in socks: s.close()
print("requests", n, "health", health())
