"""64 concurrent streaming clients on the tiny random model, all in one batch
(--max-num-seqs 64): every stream ends with [DONE] and exact usage, its text equals the
same request's non-streamed text at temperature 0, and the engine ends at baseline."""
import json
import threading
import time
import unittest

import harness as H
from harness import Server, Sock

N_CLIENTS = 64
MAX_TOKENS = 32


def post(obj):
    body = json.dumps(obj).encode()
    return (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Load(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(H.tiny_model(), "--max-num-seqs", "64")

    @classmethod
    def tearDownClass(cls):
        cls.srv.assert_clean_exit(unittest.TestCase())

    def test_64_streams(self):
        prompts = [f"request number {i} says hello" for i in range(N_CLIENTS)]
        counts = []
        for p in prompts:
            st, _, tok = self.srv.post_json("/tokenize", {"prompt": p})
            counts.append(tok["count"])
        results = [None] * N_CLIENTS
        barrier = threading.Barrier(N_CLIENTS)

        def client(i):
            try:
                k = Sock(self.srv.port, timeout=120)
                barrier.wait(timeout=30)
                k.send(post({"prompt": prompts[i], "max_tokens": MAX_TOKENS, "temperature": 0,
                             "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}))
                st, h, body = k.read_response(timeout=120)
                k.close()
                results[i] = (st, H.sse_events(body))
            except Exception as e:  # reported below
                results[i] = ("error", repr(e))

        t0 = time.time()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(N_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        elapsed = time.time() - t0
        streamed = []
        for i, (st, ev) in enumerate(results):
            self.assertEqual(st, 200, f"client {i}: {ev}")
            self.assertEqual(ev[-1], "[DONE]", f"client {i}")
            usage = json.loads(ev[-2])["usage"]
            self.assertEqual(usage["completion_tokens"], MAX_TOKENS, f"client {i}")
            self.assertEqual(usage["prompt_tokens"], counts[i], f"client {i}")
            self.assertEqual(usage["total_tokens"], counts[i] + MAX_TOKENS)
            chunks = [json.loads(e) for e in ev[:-2]]
            self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
            streamed.append("".join(c["choices"][0]["text"] for c in chunks))
        print(f"({N_CLIENTS} streams of {MAX_TOKENS} tokens in {elapsed:.2f} s)", end=" ", flush=True)
        self.srv.wait_baseline(timeout=10)
        for i in (0, 17, 63):  # batch invariance through the server
            st, _, c = self.srv.post_json("/v1/completions", {"prompt": prompts[i], "max_tokens": MAX_TOKENS,
                                                              "temperature": 0, "ignore_eos": True})
            self.assertEqual(c["choices"][0]["text"], streamed[i], f"client {i}: alone = in a batch of 64")


if __name__ == "__main__":
    H.setup_from_argv()
    H.main()
