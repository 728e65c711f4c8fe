"""Raw-socket tests of quill serve's HTTP layer: keep-alive, pipelining, every limit (431, 413,
408 timeouts, idle close, --max-connections), malformed and smuggling shapes (400 or 505, and
the connection closed), Expect, methods, CORS. Runs on the tiny random model."""
import time
import unittest

import harness as H
from harness import Server, Sock, exchange

LIMITS = ["--max-request-bytes", "4096", "--max-header-bytes", "4096", "--max-headers", "20",
          "--max-request-line-bytes", "1024", "--header-timeout", "1", "--body-timeout", "1",
          "--idle-timeout", "2", "--cors-origins", "https://app.example"]


def req(line, *headers, body=b""):
    h = "".join(x + "\r\n" for x in headers)
    return line.encode() + b"\r\n" + h.encode() + b"\r\n" + body


class Http(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(H.tiny_model(), *LIMITS)
        cls.port = cls.srv.port

    @classmethod
    def tearDownClass(cls):
        cls.srv.assert_clean_exit(unittest.TestCase())

    def refused(self, data, status=400, what=""):
        st, h, body, closed = exchange(self.port, data)
        self.assertEqual(st, status, f"{what}: {body[:200]!r}")
        self.assertTrue(closed, f"{what}: the connection must close after a refused request")
        return body

    # ---- keep-alive and pipelining ----

    def test_keep_alive(self):
        k = Sock(self.port)
        for _ in range(3):
            k.send(req("GET /health HTTP/1.1", "Host: x"))
            st, h, body = k.read_response()
            self.assertEqual(st, 200)
            self.assertEqual(body, b'{"status":"ok"}')
            self.assertNotEqual(h.get("connection"), "close")
        k.close()

    def test_pipelining(self):
        k = Sock(self.port)
        body = b'{"prompt":"hello world"}'
        k.send(req("GET /health HTTP/1.1", "Host: x") +
               req("POST /tokenize HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", body=body) +
               req("GET /v1/models HTTP/1.1", "Host: x") +
               req("POST /detokenize HTTP/1.1", "Host: x", "Content-Length: 16", body=b'{"tokens":[1,2]}'))
        st1, _, b1 = k.read_response()
        st2, _, b2 = k.read_response()
        st3, _, b3 = k.read_response()
        st4, _, b4 = k.read_response()
        self.assertEqual((st1, st2, st3, st4), (200, 200, 200, 200))
        self.assertEqual(b1, b'{"status":"ok"}')
        self.assertIn(b'"tokens"', b2)
        self.assertIn(b'"object":"list"', b3)
        self.assertIn(b'"prompt"', b4)
        k.close()

    def test_chunked_request_body(self):
        body = b'{"prompt":"hello"}'
        data = req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: chunked",
                   body=b"5\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n")
        st, _, b, closed = exchange(self.port, data)
        self.assertEqual(st, 200, b)
        self.assertFalse(closed)
        # byte by byte: every CRLF check must hold across reads, and the next request follows
        k = Sock(self.port)
        for i in range(len(data)):
            k.send(data[i:i + 1])
            time.sleep(0.002)
        k.send(req("GET /health HTTP/1.1", "Host: x"))
        self.assertEqual(k.read_response()[0], 200)
        self.assertEqual(k.read_response()[0], 200)
        k.close()

    def test_http10(self):
        k = Sock(self.port)
        k.send(b"GET /health HTTP/1.0\r\n\r\n")
        st, h, body = k.read_response()
        self.assertEqual(st, 200)
        _, closed = k.read_until_close(2)
        self.assertTrue(closed, "HTTP/1.0 without keep-alive closes")

    def test_absolute_form(self):
        st, _, body, _ = exchange(self.port, req("GET http://localhost/health HTTP/1.1", "Host: localhost"))
        self.assertEqual(st, 200)

    # ---- limits ----

    def test_request_line_too_long(self):
        self.refused(req("GET /" + "a" * 2000 + " HTTP/1.1", "Host: x"), 431, "long target")

    def test_header_block_too_large(self):
        self.refused(req("GET /health HTTP/1.1", "Host: x", "X-Big: " + "b" * 5000), 431, "big header")

    def test_header_block_too_large_never_ending(self):
        # headers that never end: refused as soon as the limit is passed, not at a timeout
        k = Sock(self.port)
        k.send(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n" * 200)
        st, _, _ = k.read_response(timeout=5)
        self.assertEqual(st, 431)
        k.close()

    def test_too_many_headers(self):
        hs = ["Host: x"] + [f"X-H{i}: v" for i in range(25)]
        self.refused(req("GET /health HTTP/1.1", *hs), 431, "25 headers")

    def test_body_too_large_from_content_length(self):
        # the body is never sent: the 413 must come from Content-Length alone, at once
        t0 = time.time()
        k = Sock(self.port)
        k.send(req("POST /v1/completions HTTP/1.1", "Host: x", "Content-Type: application/json",
                   "Content-Length: 1000000000"))
        st, h, body = k.read_response(timeout=5)
        self.assertEqual(st, 413)
        self.assertIn(b"request_too_large", body)
        self.assertLess(time.time() - t0, 2.5, "answered from the headers (a wait for the body would end in 408)")
        _, closed = k.read_until_close(5)
        self.assertTrue(closed)
        k.close()

    def test_chunked_body_too_large(self):
        chunk = b"x" * 3000
        data = req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: chunked",
                   body=(b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
        self.refused(data, 413, "chunked body over the limit")

    def test_header_timeout(self):
        k = Sock(self.port)
        k.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never ends
        t0 = time.time()
        st, _, body = k.read_response(timeout=6)
        self.assertEqual(st, 408)
        self.assertIn(b"--header-timeout", body)
        self.assertLess(time.time() - t0, 5)
        _, closed = k.read_until_close(3)
        self.assertTrue(closed)
        k.close()

    def test_slowloris_header_timeout(self):
        # a byte every 300 ms still times out: the limit is on the whole block
        k = Sock(self.port)
        t0 = time.time()
        k.send(b"GET /health HTTP/1.1\r\n")
        got = None
        for _ in range(20):
            try:
                k.send(b"X")
            except OSError:
                break
            k.s.settimeout(0.3)
            try:
                got = k.s.recv(65536)
                if got:
                    break
            except OSError:
                pass
        self.assertTrue(got and got.startswith(b"HTTP/1.1 408"), got)
        self.assertLess(time.time() - t0, 4)
        k.close()

    def test_body_timeout(self):
        k = Sock(self.port)
        k.send(req("POST /tokenize HTTP/1.1", "Host: x", "Content-Length: 100", body=b'{"prompt":'))
        t0 = time.time()
        st, _, body = k.read_response(timeout=6)
        self.assertEqual(st, 408)
        self.assertIn(b"--body-timeout", body)
        self.assertLess(time.time() - t0, 5)
        k.close()

    def test_idle_timeout(self):
        k = Sock(self.port)
        t0 = time.time()
        data, closed = k.read_until_close(timeout=6)
        self.assertTrue(closed, "an idle connection is closed")
        self.assertEqual(data, b"", "silently")
        self.assertGreater(time.time() - t0, 1.5)
        # and after a keep-alive response too
        k = Sock(self.port)
        k.send(req("GET /health HTTP/1.1", "Host: x"))
        self.assertEqual(k.read_response()[0], 200)
        _, closed = k.read_until_close(timeout=6)
        self.assertTrue(closed)

    def test_max_connections(self):
        srv = Server(H.tiny_model(), "--max-connections", "3", "--idle-timeout", "30")
        try:
            held = [Sock(srv.port) for _ in range(3)]
            for k in held:  # all three are served
                k.send(req("GET /health HTTP/1.1", "Host: x"))
                self.assertEqual(k.read_response()[0], 200)
            st, _, body, closed = exchange(srv.port, req("GET /health HTTP/1.1", "Host: x"))
            self.assertEqual(st, 503)
            self.assertIn(b"--max-connections", body)
            self.assertTrue(closed)
            for k in held:
                k.close()
            deadline = time.time() + 5
            while time.time() < deadline:  # a slot is free again once the server saw the closes
                st, _, _, _ = exchange(srv.port, req("GET /health HTTP/1.1", "Host: x"))
                if st == 200:
                    break
                time.sleep(0.1)
            self.assertEqual(st, 200)
        finally:
            srv.assert_clean_exit(self)

    # ---- malformed requests and smuggling shapes: 400 (or 505) and the connection closed ----

    def test_smuggling_shapes(self):
        nxt = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"  # must never be answered
        cases = {
            "CL then TE": req("POST /tokenize HTTP/1.1", "Host: x", "Content-Length: 5",
                              "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
            "TE then CL": req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: chunked",
                              "Content-Length: 5", body=b"0\r\n\r\n"),
            "two different CL": req("POST /tokenize HTTP/1.1", "Host: x", "Content-Length: 5",
                                    "Content-Length: 6", body=b"hello!"),
            "two equal CL": req("POST /tokenize HTTP/1.1", "Host: x", "Content-Length: 5",
                                "Content-Length: 5", body=b"hello"),
            "CL list": req("POST /tokenize HTTP/1.1", "Host: x", "Content-Length: 5, 5", body=b"hello"),
            "CL sign": req("POST /tokenize HTTP/1.1", "Host: x", "Content-Length: +5", body=b"hello"),
            "CL hex": req("POST /tokenize HTTP/1.1", "Host: x", "Content-Length: 0x5", body=b"hello"),
            "TE gzip": req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: gzip", body=b"x"),
            "TE chunked, gzip": req("POST /tokenize HTTP/1.1", "Host: x",
                                    "Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n"),
            "TE xchunked": req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: xchunked",
                               body=b"0\r\n\r\n"),
            "TE twice": req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: chunked",
                            "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
            "space before colon": req("POST /tokenize HTTP/1.1", "Host: x",
                                      "Transfer-Encoding : chunked", body=b"0\r\n\r\n"),
            "TE in HTTP/1.0": req("POST /tokenize HTTP/1.0", "Transfer-Encoding: chunked",
                                  body=b"0\r\n\r\n"),
            "obs-fold": req("GET /health HTTP/1.1", "Host: x", "X-A: a", " b"),
            "obs-fold of TE": req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: gzip",
                                  " chunked", body=b"0\r\n\r\n"),
            "bare LF": b"GET /health HTTP/1.1\nHost: x\n\n",
            "bare LF after the request line": b"GET /health HTTP/1.1\nHost: x\r\n\r\n",
            "bare LF at the end": b"GET /health HTTP/1.1\r\nHost: x\r\n\n",
            "bare CR": b"GET /health HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",
            "chunk data without CRLF": req("POST /tokenize HTTP/1.1", "Host: x",
                                           "Transfer-Encoding: chunked", body=b"5\r\nhelloXX0\r\n\r\n"),
            "chunk size with space": req("POST /tokenize HTTP/1.1", "Host: x",
                                         "Transfer-Encoding: chunked", body=b"5 \r\nhello\r\n0\r\n\r\n"),
            "chunk size 0x": req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: chunked",
                                 body=b"0x5\r\nhello\r\n0\r\n\r\n"),
            "chunk size overflow": req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: chunked",
                                       body=b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            "chunk LF only": req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: chunked",
                                 body=b"5\nhello\r\n0\r\n\r\n"),
            "chunk data ended by LF": req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: chunked",
                                          body=b"2\r\n{}\n0\r\n\r\n"),
            "last chunk ended by LF": req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: chunked",
                                          body=b"2\r\n{}\r\n0\r\n\n"),
            "trailer fields": req("POST /tokenize HTTP/1.1", "Host: x", "Transfer-Encoding: chunked",
                                  body=b"2\r\n{}\r\n0\r\nX-T: y\r\n\r\n"),
            "NUL in a value": b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
            "control byte in a value": b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n",
            "two spaces in the request line": b"GET  /health HTTP/1.1\r\nHost: x\r\n\r\n",
            "space in the target": b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n",
            "lower-case method": b"get /health HTTP/1.1\r\nHost: x\r\n\r\n",
            "unknown method": b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n",
            "no Host": b"GET /health HTTP/1.1\r\n\r\n",
            "two Host": b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "fragment": b"GET /health#x HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/0.9": b"GET /health\r\n\r\n",
            "HTTP/1.2": b"GET /health HTTP/1.2\r\nHost: x\r\n\r\n",
            "leading space header": b"GET /health HTTP/1.1\r\n Host: x\r\n\r\n",
            "bad escape": b"GET /he%zzalth HTTP/1.1\r\nHost: x\r\n\r\n",
            "encoded NUL": b"GET /health%00 HTTP/1.1\r\nHost: x\r\n\r\n",
            "authority-form": b"CONNECT localhost:80 HTTP/1.1\r\nHost: x\r\n\r\n",
        }
        for name, data in cases.items():
            with self.subTest(name):
                k = Sock(self.port)
                try:
                    k.send(data + nxt)
                except OSError:
                    pass
                st, _, body = k.read_response(timeout=5)
                self.assertIn(st, (400, 505), f"{name}: {body[:200]!r}")
                rest, closed = k.read_until_close(3)
                self.assertTrue(closed, f"{name}: the connection must close")
                self.assertNotIn(b"HTTP/1.1 200", rest, f"{name}: the request behind it was answered")
                k.close()
        st, _, _, _ = exchange(self.port, b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n")
        self.assertEqual(st, 505)

    def test_upgrade_closes(self):
        st, _, _, closed = exchange(self.port, req("GET /health HTTP/1.1", "Host: x", "Upgrade: h2c",
                                                   "Connection: Upgrade, HTTP2-Settings"))
        self.assertEqual(st, 200)
        self.assertTrue(closed, "no protocol switch: the connection closes")

    # ---- methods, routes, bodies ----

    def test_method_and_route_errors(self):
        st, h, body, _ = exchange(self.port, req("GET /v1/completions HTTP/1.1", "Host: x"))
        self.assertEqual(st, 405)
        self.assertEqual(h.get("allow"), "POST")
        self.assertIn(b"method_not_allowed", body)
        st, _, _, _ = exchange(self.port, req("POST /health HTTP/1.1", "Host: x", "Content-Length: 0"))
        self.assertEqual(st, 405)
        st, _, body, _ = exchange(self.port, req("GET /v2/nothing HTTP/1.1", "Host: x"))
        self.assertEqual(st, 404)
        self.assertIn(b"Invalid URL (GET /v2/nothing)", body)

    def test_json_errors(self):
        srv = self.srv
        st, _, body = srv.request("POST", "/v1/completions", b"{not json", {"Content-Type": "application/json"})
        self.assertEqual(st, 400)
        self.assertIn(b'"type":"invalid_request_error"', body)
        st, _, e = srv.post_json("/v1/completions", {"prompt": "hi", "max_tokens": "ten"})
        self.assertEqual(st, 400)
        self.assertEqual(e["error"]["param"], "max_tokens")
        st, _, e = srv.post_json("/v1/completions", {"prompt": "hi", "temperature": 9})
        self.assertEqual(st, 400)
        self.assertEqual(e["error"]["param"], "temperature")
        st, _, e = srv.post_json("/v1/completions", {"model": "gpt-9", "prompt": "hi"})
        self.assertEqual(st, 404)
        self.assertEqual(e["error"]["code"], "model_not_found")
        st, _, e = srv.post_json("/v1/completions", {"prompt": "hi " * 600, "max_tokens": 4})
        self.assertEqual(st, 400)
        self.assertEqual(e["error"]["code"], "context_length_exceeded")
        st, _, e = srv.post_json("/v1/completions", {"prompt": "hi", "max_tokens": 600})
        self.assertEqual(st, 400)
        self.assertEqual(e["error"]["code"], "context_length_exceeded")
        st, _, e = srv.post_json("/v1/completions", {"prompt": [1, 2, 99999]})
        self.assertEqual(st, 400)
        st, _, e = srv.post_json("/v1/completions", {"prompt": ""})
        self.assertEqual(st, 400)
        self.assertIn("empty", e["error"]["message"])

    def test_expect_continue(self):
        body = b'{"prompt":"hello"}'
        k = Sock(self.port)
        k.send(req("POST /tokenize HTTP/1.1", "Host: x", "Expect: 100-continue",
                   f"Content-Length: {len(body)}"))
        st, _, _ = k.read_response()
        self.assertEqual(st, 100)
        k.send(body)
        st, _, b = k.read_response()
        self.assertEqual(st, 200, b)
        k.close()
        self.refused(req("POST /tokenize HTTP/1.1", "Host: x", "Expect: something-else",
                         "Content-Length: 2", body=b"{}"), 417, "unknown Expect")

    def test_cors(self):
        st, h, _, _ = exchange(self.port, req("GET /health HTTP/1.1", "Host: x", "Origin: https://app.example"))
        self.assertEqual(h.get("access-control-allow-origin"), "https://app.example")
        self.assertEqual(h.get("vary"), "Origin")
        st, h, _, _ = exchange(self.port, req("GET /health HTTP/1.1", "Host: x", "Origin: https://evil.example"))
        self.assertNotIn("access-control-allow-origin", h)
        st, h, _, closed = exchange(self.port, req("OPTIONS /v1/chat/completions HTTP/1.1", "Host: x",
                                                   "Origin: https://app.example",
                                                   "Access-Control-Request-Method: POST",
                                                   "Access-Control-Request-Headers: authorization, content-type"))
        self.assertEqual(st, 204)
        self.assertIn("POST", h.get("access-control-allow-methods", ""))
        self.assertIn("Authorization", h.get("access-control-allow-headers", ""))
        self.assertFalse(closed, "a preflight keeps the connection")
        st, h, _, _ = exchange(self.port, req("OPTIONS /v1/chat/completions HTTP/1.1", "Host: x",
                                              "Origin: https://evil.example",
                                              "Access-Control-Request-Method: POST"))
        self.assertEqual(st, 403)


if __name__ == "__main__":
    H.setup_from_argv()
    H.main()
