"""A client that goes away, or stops reading, cancels its request: afterwards /metrics shows the
engine back at baseline (no running or waiting sequence, no KV block in use). Also the bounded
queue (429 + Retry-After) and --request-timeout. Runs on random models with a long context."""
import json
import socket
import time
import unittest

import harness as H
from harness import Server, Sock


def post(path, obj):
    body = json.dumps(obj).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


LONG = {"prompt": "hello there", "max_tokens": 20000, "temperature": 0, "ignore_eos": True}


class Disconnect(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(H.long_model(), "--max-output-bytes", "8192", "--max-num-seqs", "16")
        cls.port = cls.srv.port

    @classmethod
    def tearDownClass(cls):
        cls.srv.assert_clean_exit(unittest.TestCase())

    def wait_running(self, n=1, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = self.srv.metrics()
            if m["quill:num_requests_running"] >= n:
                return m
            time.sleep(0.02)
        self.fail(f"no request running after {timeout} s")

    def test_stream_disconnect(self):
        before = self.srv.metrics()["quill:request_cancelled_total"]
        k = Sock(self.port)
        k.send(post("/v1/completions", dict(LONG, stream=True)))
        got = b""
        while got.count(b"data: ") < 5:
            got += k.s.recv(65536)
        self.assertTrue(got.startswith(b"HTTP/1.1 200"))
        self.assertGreater(self.srv.metrics()["quill:kv_cache_blocks_used"], 0)
        k.close()
        t0 = time.time()
        m = self.srv.wait_baseline(timeout=10)
        self.assertLess(time.time() - t0, 5)
        self.assertEqual(m["quill:request_cancelled_total"], before + 1)

    def test_non_stream_disconnect(self):
        k = Sock(self.port)
        k.send(post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 20000, "ignore_eos": True, "n": 3}))
        self.wait_running(3)
        k.close()
        self.srv.wait_baseline(timeout=10)

    def test_half_close_cancels(self):
        # shutdown(SHUT_WR) while the request runs reads as the client going away
        k = Sock(self.port)
        k.send(post("/v1/completions", LONG))
        self.wait_running()
        k.s.shutdown(socket.SHUT_WR)
        self.srv.wait_baseline(timeout=10)
        k.close()

    def test_stopped_reading(self):
        before = self.srv.metrics()["quill:http_cutoffs_total"]
        k = Sock(self.port, rcvbuf=4096)
        # a big chunk per token (20 alternatives, 16 choices) fills the kernel's buffers sooner
        k.send(post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 20000, "ignore_eos": True, "stream": True,
                                             "n": 16, "logprobs": True, "top_logprobs": 20}))
        # read nothing: the kernel buffers fill, the server's queue passes --max-output-bytes
        t0 = time.time()
        deadline = t0 + (120 if H.ASAN else 30)
        while time.time() < deadline:
            if self.srv.metrics()["quill:http_cutoffs_total"] > before:
                break
            time.sleep(0.1)
        self.assertGreater(self.srv.metrics()["quill:http_cutoffs_total"], before, "cut off")
        print(f"(cut off after {time.time() - t0:.1f} s)", end=" ", flush=True)
        self.srv.wait_baseline(timeout=10)
        k.close()

    def test_large_body_to_a_reader_is_not_cut(self):
        # a non-streamed body far above --max-output-bytes (8 KiB here) reaches a client that reads
        before = self.srv.metrics()["quill:http_cutoffs_total"]
        st, _, c = self.srv.post_json("/v1/chat/completions", {
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 600, "ignore_eos": True,
            "n": 8, "logprobs": True, "top_logprobs": 20}, timeout=120)
        self.assertEqual(st, 200)
        self.assertEqual(c["usage"]["completion_tokens"], 8 * 600)
        self.assertEqual(len(c["choices"][7]["logprobs"]["content"]), 600)
        self.assertEqual(self.srv.metrics()["quill:http_cutoffs_total"], before)

    def test_disconnect_while_waiting(self):
        srv = Server(H.long_model(), "--max-num-seqs", "1")
        try:
            a, b = Sock(srv.port), Sock(srv.port)
            a.send(post("/v1/completions", LONG))
            deadline = time.time() + 10
            while srv.metrics()["quill:num_requests_running"] < 1 and time.time() < deadline:
                time.sleep(0.02)
            b.send(post("/v1/completions", LONG))
            while srv.metrics()["quill:num_requests_waiting"] < 1 and time.time() < deadline:
                time.sleep(0.02)
            self.assertEqual(srv.metrics()["quill:num_requests_waiting"], 1)
            b.close()  # the waiting one goes
            while srv.metrics()["quill:num_requests_waiting"] > 0 and time.time() < deadline:
                time.sleep(0.02)
            self.assertEqual(srv.metrics()["quill:num_requests_waiting"], 0)
            a.close()
            srv.wait_baseline(timeout=10)
        finally:
            srv.assert_clean_exit(self)

    def test_queue_full(self):
        srv = Server(H.long_model(), "--max-num-seqs", "1", "--max-queue", "1")
        try:
            a, b = Sock(srv.port), Sock(srv.port)
            a.send(post("/v1/completions", LONG))
            deadline = time.time() + 10
            while srv.metrics()["quill:num_requests_running"] < 1 and time.time() < deadline:
                time.sleep(0.02)
            b.send(post("/v1/completions", LONG))
            while srv.metrics()["quill:num_requests_waiting"] < 1 and time.time() < deadline:
                time.sleep(0.02)
            st, h, e = srv.post_json("/v1/completions", LONG, timeout=10)
            self.assertEqual(st, 429)
            self.assertGreaterEqual(int(h["retry-after"]), 1)
            self.assertEqual(e["error"]["code"], "rate_limit_exceeded")
            a.close()
            b.close()
            srv.wait_baseline(timeout=10)
        finally:
            srv.assert_clean_exit(self)

    def test_request_timeout(self):
        srv = Server(H.long_model(), "--request-timeout", "1")
        try:
            t0 = time.time()
            st, _, e = srv.post_json("/v1/completions", LONG, timeout=20)
            self.assertEqual(st, 504)
            self.assertEqual(e["error"]["code"], "timeout")
            self.assertLess(time.time() - t0, 4)
            k = Sock(srv.port)
            k.send(post("/v1/completions", dict(LONG, stream=True)))
            st, h, body = k.read_response(timeout=20)
            self.assertEqual(st, 200)
            ev = H.sse_events(body)
            self.assertEqual(ev[-1], "[DONE]")
            self.assertIn("timeout", json.loads(ev[-2])["error"]["code"])
            k.close()
            srv.wait_baseline(timeout=10)
        finally:
            srv.assert_clean_exit(self)


if __name__ == "__main__":
    H.setup_from_argv()
    H.main()
