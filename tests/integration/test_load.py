"""64 concurrent streaming clients on the tiny random model, all in one batch
(--max-num-seqs 64): every stream ends with [DONE] and exact usage, its text equals the
same request's non-streamed text at temperature 0, and the engine ends at baseline.
Then churn: clients that reuse keep-alive connections, mix streams, chat, n = 2 and logprobs,
and hang up at random points; every answered exchange is whole and the engine ends at
baseline (the load under which the loop once freed a request twice: NOTE(outbox-links))."""
import json
import random
import threading
import time
import unittest

import harness as H
from harness import Server, Sock

N_CLIENTS = 64
MAX_TOKENS = 32


def post(obj, path="/v1/completions"):
    body = json.dumps(obj).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class ServerCase(unittest.TestCase):
    """A server on the tiny model for the whole class, which must exit cleanly at the end."""
    MAX_NUM_SEQS = None

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(H.tiny_model(), "--max-num-seqs", str(cls.MAX_NUM_SEQS))

    @classmethod
    def tearDownClass(cls):
        cls.srv.assert_clean_exit(unittest.TestCase())


class Load(ServerCase):
    MAX_NUM_SEQS = 64

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


CHURN_CLIENTS = 12
CHURN_EXCHANGES = 400  # per client


def churn_request(r):
    """One random request: (its bytes, stream, choices)."""
    chat, stream, n = r.random() < 0.5, r.random() < 0.6, r.choice([1, 1, 2])
    obj = {"max_tokens": r.randint(1, 24), "temperature": r.choice([0, 0.8]), "stream": stream,
           "n": n, "ignore_eos": True}
    if chat:
        obj["messages"] = [{"role": "user", "content": f"say something {r.randint(0, 999)}"}]
    else:
        obj["prompt"] = f"once upon a time {r.randint(0, 999)}"
        if r.random() < 0.3:
            obj["logprobs"] = 2
    return post(obj, "/v1/chat/completions" if chat else "/v1/completions"), stream, n


class Churn(ServerCase):
    MAX_NUM_SEQS = 8

    def test_keepalive_and_hangups(self):
        before = self.srv.metrics()["quill:request_cancelled_total"]
        problems, counts = [], {"whole": 0, "cut": 0}
        lock = threading.Lock()

        def client(i):
            r = random.Random(1000 + i)
            left, k = CHURN_EXCHANGES, None
            try:
                while left > 0:
                    if k is None:
                        k = Sock(self.srv.port, timeout=60)
                    req, stream, n = churn_request(r)
                    k.send(req)
                    left -= 1
                    if r.random() < 0.25:  # hang up: at once, or after the first bytes
                        if r.random() < 0.5:
                            k.s.recv(r.randint(1, 300))
                        k.close()
                        k = None
                        with lock:
                            counts["cut"] += 1
                        continue
                    st, h, body = k.read_response(timeout=60)
                    if st != 200:
                        raise AssertionError(f"status {st}: {body[:200]!r}")
                    if stream:
                        ev = H.sse_events(body)
                        if not ev or ev[-1] != "[DONE]":
                            raise AssertionError(f"stream not ended by [DONE]: {body[-200:]!r}")
                        ends = sum(1 for e in ev[:-1] for c in json.loads(e)["choices"]
                                   if c.get("finish_reason"))
                        if ends != n:
                            raise AssertionError(f"{ends} choices finished of {n}")
                    elif len(json.loads(body)["choices"]) != n:
                        raise AssertionError(f"not {n} choices: {body[:200]!r}")
                    with lock:
                        counts["whole"] += 1
                    if r.random() < 0.2:  # a new connection next time
                        k.close()
                        k = None
            except Exception as e:  # reported below
                with lock:
                    problems.append(f"client {i}: {e!r}")
            if k is not None:
                k.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CHURN_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        self.assertEqual(problems, [])
        self.assertEqual(counts["whole"] + counts["cut"], CHURN_CLIENTS * CHURN_EXCHANGES)
        self.assertEqual(self.srv.request("GET", "/health")[0], 200)
        m = self.srv.wait_baseline(timeout=10)
        cancelled = m["quill:request_cancelled_total"] - before
        self.assertLessEqual(cancelled, counts["cut"])  # only a hang-up cancels
        print(f"({counts['whole']} whole, {counts['cut']} cut, {cancelled:.0f} cancelled)", end=" ",
              flush=True)


if __name__ == "__main__":
    H.setup_from_argv()
    H.main()
