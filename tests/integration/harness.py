"""tests/integration/harness.py — starts the real `quill serve` on a loopback ephemeral port and
talks to it: raw sockets, plain HTTP, /metrics. Used by every test_*.py beside it.

Conventions:
  - argv: test_x.py QUILL_BINARY [--asan]; QL_DEFAULT_MODEL names the default model (SmolLM2);
    a `quill mkmodel --shape tiny` model is made on the fly for tests that need no real text.
  - Every wait is bounded (deadline loops, socket timeouts); a test that cannot run says why and
    exits 77 (CTest's SKIP_RETURN_CODE).
  - Under --asan the binary is the sanitizer build: the server must exit 0 on SIGTERM with no
    AddressSanitizer or LeakSanitizer report on stderr (leaks at exit count).
"""
import http.client
import json
import os
import re
import signal as _signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

SKIP = 77
QUILL = None
ASAN = False
TMP = tempfile.mkdtemp(prefix="quill-it-")


def setup_from_argv():
    """Reads QUILL_BINARY [--asan] from argv, leaving unittest's own arguments."""
    global QUILL, ASAN
    if len(sys.argv) < 2:
        print("usage: test_x.py QUILL_BINARY [--asan] [unittest args]", file=sys.stderr)
        sys.exit(2)
    QUILL = os.path.abspath(sys.argv[1])
    rest = sys.argv[2:]
    if "--asan" in rest:
        ASAN = True
        rest.remove("--asan")
    sys.argv = [sys.argv[0]] + rest


def skip_all(why):
    print(f"SKIP: {why}")
    sys.exit(SKIP)


_tiny = None


def tiny_model():
    """A random-weight tiny model (vocabulary 512, context 512), made once per test process."""
    global _tiny
    if _tiny is None:
        path = os.path.join(TMP, "tiny.gguf")
        subprocess.run([QUILL, "mkmodel", "--shape", "tiny", "-o", path], check=True,
                       stdout=subprocess.DEVNULL, timeout=60)
        _tiny = path
    return _tiny


_long = None


def long_model():
    """The tiny model's shape with a 32768-token context: requests that run for seconds."""
    global _long
    if _long is None:
        shape = os.path.join(TMP, "long.json")
        with open(shape, "w") as f:
            json.dump({"arch": "llama", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_head_kv": 2,
                       "n_ff": 128, "n_vocab": 512, "n_ctx": 32768, "rope_freq_base": 10000,
                       "rms_eps": 1e-5, "tied": True}, f)
        path = os.path.join(TMP, "long.gguf")
        subprocess.run([QUILL, "mkmodel", "--config", shape, "-o", path], check=True,
                       stdout=subprocess.DEVNULL, timeout=60)
        _long = path
    return _long


def default_model():
    m = os.environ.get("QL_DEFAULT_MODEL", "")
    return m if m and os.path.isfile(m) else None


class Server:
    """`quill serve` on 127.0.0.1 and an ephemeral port, stderr in a file."""

    def __init__(self, model, *args, env=None, ready=True, ready_timeout=120):
        self.log_path = tempfile.mktemp(prefix="serve-", suffix=".log", dir=TMP)
        self.log = open(self.log_path, "wb")
        e = dict(os.environ)
        e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        if env:
            e.update(env)
        cmd = [QUILL, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
               "--threads", "2", "--log-level", "info", *[str(a) for a in args]]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, env=e)
        self.port = None
        deadline = time.time() + 30
        while time.time() < deadline and self.port is None:
            m = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", self._read_log())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        if self.port is None:
            self.kill()
            raise RuntimeError("quill serve did not start:\n" + self._read_log().decode(errors="replace"))
        self.host = "127.0.0.1"
        self.url = f"http://127.0.0.1:{self.port}"
        if ready:
            self.wait_ready(ready_timeout)

    def _read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read()

    def log_text(self):
        return self._read_log().decode(errors="replace")

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                st, _, _ = self.request("GET", "/ready", timeout=2)
                if st == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("quill serve exited while loading:\n" + self.log_text())
            time.sleep(0.05)
        raise RuntimeError("quill serve not ready in time:\n" + self.log_text())

    def request(self, method, path, body=None, headers=None, timeout=60):
        """One request on a fresh connection: (status, headers dict (lower-case), body bytes)."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            h = dict(headers or {})
            if body is not None and not isinstance(body, (bytes, str)):
                body = json.dumps(body)
                h.setdefault("Content-Type", "application/json")
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def post_json(self, path, obj, headers=None, timeout=120):
        st, h, data = self.request("POST", path, obj, headers, timeout)
        return st, h, (json.loads(data) if data else None)

    def metrics(self, headers=None):
        """/metrics as {name: value} for unlabelled-by-more-than-model_name samples, and
        {name{labels}: value} for the rest."""
        st, _, data = self.request("GET", "/metrics", headers=headers, timeout=10)
        assert st == 200, (st, data)
        out = {}
        for line in data.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            key, val = line.rsplit(" ", 1)
            name = key.split("{", 1)[0]
            labels = key[len(name):]
            if re.fullmatch(r'\{model_name="[^"]*"\}', labels) or not labels:
                out[name] = float(val)
            else:
                out[key] = float(val)
        return out

    def wait_baseline(self, timeout=30, headers=None):
        """Waits until the engine holds nothing: no running or waiting sequence, no KV block in
        use. Returns the last metrics; raises on timeout."""
        deadline = time.time() + timeout
        m = None
        while time.time() < deadline:
            m = self.metrics(headers)
            if (m["quill:num_requests_running"] == 0 and m["quill:num_requests_waiting"] == 0
                    and m["quill:kv_cache_usage_perc"] == 0 and m["quill:kv_cache_blocks_used"] == 0):
                return m
            time.sleep(0.05)
        raise AssertionError(f"engine not back at baseline after {timeout} s: {m}")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=_signal.SIGTERM, timeout=60):
        """Signals the server and waits for it; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("quill serve did not exit in time:\n" + self.log_text()[-4000:])
        self.log.close()
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if not self.log.closed:
            self.log.close()

    def assert_clean_exit(self, tc, timeout=60):
        """SIGTERM, then exit 0 and (under ASan) no sanitizer report."""
        rc = self.stop(timeout=timeout)
        log = self.log_text()
        tc.assertEqual(rc, 0, "exit status after SIGTERM:\n" + log[-4000:])
        for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            tc.assertNotIn(bad, log, log[-8000:])


# ---- raw sockets ----

class Sock:
    """A client socket with a read buffer shared by read_response calls."""

    def __init__(self, port, timeout=10, rcvbuf=None):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(timeout)
        self.s.connect(("127.0.0.1", port))
        self.rest = b""

    def send(self, data):
        self.s.sendall(data)

    def close(self):
        self.s.close()

    def read_until_close(self, timeout=10, limit=1 << 22):
        """Reads until the peer closes (or resets), the limit, or the deadline:
        (bytes, closed)."""
        deadline = time.time() + timeout
        buf, self.rest = self.rest, b""
        while time.time() < deadline and len(buf) < limit:
            self.s.settimeout(max(0.01, deadline - time.time()))
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                return buf, True
            if not d:
                return buf, True
            buf += d
        return buf, False

    def read_response(self, timeout=10):
        """One HTTP response (Content-Length, chunked, or up to the close):
        (status, headers dict with lower-case names, body bytes)."""
        deadline = time.time() + timeout
        buf = self.rest

        def more():
            nonlocal buf
            if time.time() > deadline:
                raise TimeoutError("response did not arrive: %r" % buf[:200])
            self.s.settimeout(max(0.01, deadline - time.time()))
            d = self.s.recv(65536)
            if not d:
                raise ConnectionError("closed before the response ended: %r" % buf[:200])
            buf += d

        while b"\r\n\r\n" not in buf:
            more()
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for ln in lines[1:]:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        if status < 200 or status in (204, 304):
            body = b""
        elif "content-length" in headers:
            n = int(headers["content-length"])
            while len(buf) < n:
                more()
            body, buf = buf[:n], buf[n:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in buf:
                    more()
                size_line, buf = buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(buf) < size + 2:
                    more()
                body += buf[:size]
                assert buf[size:size + 2] == b"\r\n", buf[size:size + 2]
                buf = buf[size + 2:]
                if size == 0:
                    break
        else:
            self.rest = buf
            rest, _ = self.read_until_close(max(0.1, deadline - time.time()))
            body, buf = rest, b""
        self.rest = buf
        return status, headers, body


def exchange(port, data, timeout=10):
    """Sends raw bytes on a new connection; returns (status, headers, body, closed_after): whether
    the server closed the connection after its response."""
    k = Sock(port, timeout)
    try:
        k.send(data)
        st, h, body = k.read_response(timeout)
        # a response that announces the close gets time for it; a keep-alive one a moment
        wait = 3.0 if h.get("connection", "").lower() == "close" else 0.2
        rest, closed = k.read_until_close(timeout=wait)
        return st, h, body, closed and not rest
    finally:
        k.close()


def sse_events(body):
    """The `data:` payloads of an SSE body, in order."""
    out = []
    for block in body.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                out.append(line[6:])
    return out


def main():
    unittest.main(verbosity=2)
