"""SIGTERM/SIGINT: stop accepting, let in-flight requests finish (up to --shutdown-timeout), end
the rest with an explicit error, exit 0. A backend fault: in-flight requests end with an explicit
error, /ready answers 503, the process exits 1. Random-weight model with a long context."""
import json
import signal
import socket
import time
import unittest

import harness as H
from harness import Server, Sock


def post(path, obj, keep=True):
    body = json.dumps(obj).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def stream_req(max_tokens):
    return post("/v1/completions", {"prompt": "hello", "max_tokens": max_tokens, "temperature": 0,
                                    "ignore_eos": True, "stream": True})


def wait_first_chunk(k, timeout=20):
    deadline = time.time() + timeout
    buf = b""
    while b"data: " not in buf and time.time() < deadline:
        k.s.settimeout(1)
        try:
            buf += k.s.recv(65536)
        except socket.timeout:
            pass
    k.rest = buf  # read_response goes on from here
    return buf


class Shutdown(unittest.TestCase):
    def test_drain_finishes_in_flight(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(signal=sig.name):
                srv = Server(H.long_model())
                idle = Sock(srv.port)  # a keep-alive connection with nothing in flight
                idle.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertEqual(idle.read_response()[0], 200)
                k = Sock(srv.port, timeout=60)
                k.send(stream_req(1500))
                wait_first_chunk(k)
                srv.signal(sig)
                time.sleep(0.3)
                with self.assertRaises(OSError, msg="no new connections once draining"):
                    Sock(srv.port, timeout=2)
                _, closed = idle.read_until_close(3)
                self.assertTrue(closed, "idle connections are closed at once")
                st, _, body = k.read_response(timeout=60)
                ev = H.sse_events(body)
                self.assertEqual(ev[-1], "[DONE]")
                last = json.loads(ev[-2])
                self.assertEqual(last["choices"][0]["finish_reason"], "length", "finished, not cut")
                text = "".join(json.loads(e)["choices"][0]["text"] for e in ev[:-1])
                self.assertGreater(len(text), 0)
                rc = srv.proc.wait(timeout=30)
                self.assertEqual(rc, 0, srv.log_text()[-3000:])
                self.assertIn("draining", srv.log_text())

    def test_drain_timeout_ends_the_rest_with_an_error(self):
        srv = Server(H.long_model(), "--shutdown-timeout", "1")
        k = Sock(srv.port, timeout=60)
        k.send(stream_req(30000))
        wait_first_chunk(k)
        j = Sock(srv.port, timeout=60)
        j.send(post("/v1/completions", {"prompt": "hi", "max_tokens": 30000, "ignore_eos": True}))
        time.sleep(0.2)
        t0 = time.time()
        srv.signal(signal.SIGTERM)
        st, _, body = k.read_response(timeout=30)
        ev = H.sse_events(body)
        self.assertEqual(ev[-1], "[DONE]")
        err = json.loads(ev[-2])["error"]
        self.assertEqual(err["code"], "service_unavailable")
        self.assertLess(time.time() - t0, 5)
        st, _, body = j.read_response(timeout=30)
        self.assertEqual(st, 503)
        self.assertIn(b"shutting down", body)
        rc = srv.proc.wait(timeout=30)
        self.assertEqual(rc, 0)
        self.assertNotIn("ERROR: AddressSanitizer", srv.log_text())
        self.assertNotIn("ERROR: LeakSanitizer", srv.log_text())

    def test_backend_fault(self):
        srv = Server(H.long_model(), env={"QL_TEST_FAIL_FORWARD_AFTER": "40"})
        k = Sock(srv.port, timeout=60)
        # the stream, and behind it on the same connection a /ready the server reads while the
        # stream runs: it is answered after the fault
        k.send(stream_req(30000) + b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        st, _, body = k.read_response(timeout=30)
        self.assertEqual(st, 200)
        ev = H.sse_events(body)
        self.assertEqual(ev[-1], "[DONE]")
        err = json.loads(ev[-2])["error"]
        self.assertEqual(err["type"], "server_error")
        self.assertEqual(err["code"], "backend_failure")
        st, _, body = k.read_response(timeout=10)
        self.assertEqual(st, 503)
        self.assertIn(b"backend failed", body)
        rc = srv.proc.wait(timeout=30)
        self.assertEqual(rc, 1, "a backend fault exits non-zero")
        self.assertIn("backend failed", srv.log_text())
        self.assertNotIn("ERROR: AddressSanitizer", srv.log_text())
        self.assertNotIn("ERROR: LeakSanitizer", srv.log_text())


class Startup(unittest.TestCase):
    def run_serve(self, *args):
        import subprocess
        p = subprocess.run([H.QUILL, "serve", "--host", "127.0.0.1", *args], capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        return p.returncode, p.stderr.decode(errors="replace")

    def test_bad_starts(self):
        rc, err = self.run_serve("--port", "0")
        self.assertEqual(rc, 2)
        self.assertIn("--model is required", err)
        rc, err = self.run_serve("--port", "0", "--model", "/nonexistent/quill.gguf")
        self.assertEqual(rc, 1)
        self.assertIn("cannot open /nonexistent/quill.gguf", err)
        self.assertNotIn("listening on", err, "fails before listening")
        bad = H.os.path.join(H.TMP, "garbage.gguf")
        with open(bad, "wb") as f:
            f.write(b"not a gguf file\n" * 10)
        rc, err = self.run_serve("--port", "0", "--model", bad)
        self.assertEqual(rc, 1)
        self.assertIn(bad, err)
        srv = Server(H.tiny_model())
        try:
            rc, err = self.run_serve("--port", str(srv.port), "--model", H.tiny_model())
            self.assertEqual(rc, 1)
            self.assertIn("cannot listen on 127.0.0.1:%d" % srv.port, err)
        finally:
            srv.assert_clean_exit(self)


if __name__ == "__main__":
    H.setup_from_argv()
    H.main()
