"""API keys: bearer tokens, deny by default on the canonical path, only /health and /ready open;
spellings of a protected path (//, percent-encoding, dot segments, absolute-form targets) never
reach it without a key. Runs on the tiny random model."""
import json
import unittest

import harness as H
from harness import Server, exchange

KEYS = ["k1-secret", "k2-other"]


def get(path, *headers, method="GET", body=b""):
    h = "".join(x + "\r\n" for x in ("Host: localhost",) + headers)
    if method == "POST":
        h += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return f"{method} {path} HTTP/1.1\r\n{h}\r\n".encode() + body


class Auth(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(H.tiny_model(), "--api-key", KEYS[0], "--api-key", KEYS[1], ready=False)
        # /ready is open: the harness may wait on it without a key
        cls.srv.wait_ready()
        cls.port = cls.srv.port

    @classmethod
    def tearDownClass(cls):
        cls.srv.assert_clean_exit(unittest.TestCase())

    def test_open_routes(self):
        for p in ("/health", "/ready", "/health/", "//health", "/./ready", "/%68ealth"):
            st, _, body, _ = exchange(self.port, get(p))
            self.assertEqual(st, 200, p)

    def test_protected_without_key(self):
        for p in ("/v1/models", "/metrics", "/nothing/here", "/HEALTH", "/v1"):
            st, h, body, _ = exchange(self.port, get(p))
            self.assertEqual(st, 401, p)
            self.assertEqual(h.get("www-authenticate"), "Bearer")
            e = json.loads(body)["error"]
            self.assertIsNone(e["code"], "no key sent: code null")
        st, _, body, _ = exchange(self.port, get("/v1/completions", method="POST", body=b'{"prompt":"hi"}'))
        self.assertEqual(st, 401)

    def test_keys(self):
        good = [f"Authorization: Bearer {KEYS[0]}", f"Authorization: Bearer {KEYS[1]}",
                f"Authorization: bearer {KEYS[0]}", f"Authorization: Bearer   {KEYS[0]}"]
        for a in good:
            st, _, body, _ = exchange(self.port, get("/v1/models", a))
            self.assertEqual(st, 200, a)
            self.assertIn(b'"object":"list"', body)
        bad = [f"Authorization: Bearer {KEYS[0]}x", f"Authorization: Bearer {KEYS[0][:-1]}",
               "Authorization: Bearer ", f"Authorization: Basic {KEYS[0]}", f"Authorization: {KEYS[0]}",
               "Authorization: Bearer k1-secret k2-other"]
        for a in bad:
            st, _, body, _ = exchange(self.port, get("/v1/models", a))
            self.assertEqual(st, 401, a)
            self.assertNotIn(KEYS[0].encode(), body, "the key is never echoed")
        st, _, body, _ = exchange(self.port, get("/v1/models", f"Authorization: Bearer wrong"))
        self.assertEqual(json.loads(body)["error"]["code"], "invalid_api_key")
        # two Authorization headers, one of them good: refused, never the first or last wins
        st, _, _, closed = exchange(self.port, get("/v1/models", "Authorization: Bearer wrong",
                                                   f"Authorization: Bearer {KEYS[0]}"))
        self.assertEqual(st, 400)
        # with a key, an unknown path is a 404
        st, _, _, _ = exchange(self.port, get("/v2/x", f"Authorization: Bearer {KEYS[0]}"))
        self.assertEqual(st, 404)

    def test_bypass_attempts(self):
        paths = [
            "//v1/models", "///v1//models", "/v1//models", "/v1/./models", "/v1/x/../models",
            "/health/../v1/models", "/ready/../../v1/models", "/%76%31/models", "/v1%2Fmodels",
            "/v1%2fmodels", "/%2e%2e/v1/models", "/health%2f..%2fv1/models", "/health/%2e%2e/v1/models",
            "/health/%2E%2E/v1/models", "/v1/models/", "/v1/models?x=1", "/v1/models/.",
            "/health;/../v1/models", "/health\\..\\v1\\models", "/./v1/models", "/%2fv1/models",
            "http://localhost/v1/models", "HTTP://LOCALHOST/v1/models", "http://localhost//v1/models",
            "http://localhost/health/../v1/models", "https://localhost/v1/models",
            "http://localhost:80/health/%2e%2e/metrics", "/metrics/", "//metrics", "/health/../metrics",
            "/v1/models%00", "/v1/models#x", "/health#/../v1/models", "*", "localhost:80",
        ]
        for p in paths:
            with self.subTest(p):
                st, _, body, _ = exchange(self.port, get(p))
                self.assertIn(st, (400, 401), f"{p}: {st} {body[:120]!r}")
                self.assertNotIn(b'"object":"list"', body)
                self.assertNotIn(b"quill:", body)
        posts = ["//v1/completions", "/v1/./chat/completions", "/v1/chat/../completions",
                 "http://localhost/v1/completions", "/%76%31/chat/completions", "/health/../tokenize"]
        for p in posts:
            with self.subTest(p):
                st, _, body, _ = exchange(self.port, get(p, method="POST", body=b'{"prompt":"hi","max_tokens":1}'))
                self.assertIn(st, (400, 401), f"{p}: {st}")
                self.assertNotIn(b'"choices"', body)
                self.assertNotIn(b'"tokens"', body)
        # the same spellings with a key reach the route: the canonical path is one path
        for p in ("//v1/models", "/v1/x/../models", "/%76%31/models", "http://localhost/v1/models"):
            st, _, body, _ = exchange(self.port, get(p, f"Authorization: Bearer {KEYS[1]}"))
            self.assertEqual(st, 200, p)


if __name__ == "__main__":
    H.setup_from_argv()
    H.main()
