"""`quill bench` against a running `quill serve` on the default model: the results JSON is
well formed, every request's token counts equal --output-len / --input-len and the server's own
accounting (/metrics counters, which the bench never reads), the timestamps are ordered and
the summary agrees with the per-request values; arrivals, goodput and the concurrency cap do
what they say; bad arguments and an unusable server end in one clear line and a non-zero exit."""
import json
import os
import re
import subprocess
import unittest

import harness as H
from harness import Server


def counter(metrics_text, name, label=""):
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name) and (not label or label in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def bench(*args, timeout=600):
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    p = subprocess.run([H.QUILL, "bench", *[str(a) for a in args]], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert "Sanitizer" not in p.stderr, p.stderr
    return p


class Bench(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        model = H.default_model()
        if not model:
            H.skip_all("QL_DEFAULT_MODEL unset or missing (make test sets it)")
        cls.srv = Server(model, "--max-num-seqs", "4")

    @classmethod
    def tearDownClass(cls):
        cls.srv.assert_clean_exit(unittest.TestCase())

    def run_bench(self, *args):
        out = os.path.join(H.TMP, "bench.json")
        if os.path.exists(out):
            os.unlink(out)
        p = bench("--base-url", self.srv.url, "--out", out, *args)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(out) as f:
            return json.load(f), p

    def metrics(self):
        st, _, body = self.srv.request("GET", "/metrics")
        self.assertEqual(st, 200)
        return body.decode()

    def test_completions_counts_and_timestamps(self):
        m0 = self.metrics()
        n, inp, outp = 6, 24, 12
        d, p = self.run_bench("--num-prompts", n, "--input-len", inp, "--output-len", outp,
                              "--max-concurrency", 3, "--warmup", 1, "--seed", 7)
        m1 = self.metrics()
        self.assertIn("Successful requests:                     6", p.stdout)
        self.assertEqual((d["completed"], d["failed"], len(d["requests"])), (n, 0, n))
        self.assertEqual(d["endpoint"], "/v1/completions")
        self.assertEqual(d["seed"], 7)
        for r in d["requests"]:
            self.assertTrue(r["ok"], r["error"])
            # exactly --output-len tokens (ignore_eos), as the server's usage says
            self.assertEqual(r["output_tokens"], outp)
            self.assertEqual(r["usage_completion_tokens"], outp)
            self.assertEqual(r["usage_prompt_tokens"], inp)
            self.assertEqual(r["input_len"], inp)
            self.assertTrue(1 <= r["chunks"] <= outp)
            ts = r["t_chunks"]
            self.assertEqual(len(ts), r["chunks"])
            self.assertEqual(ts, sorted(ts))
            self.assertLessEqual(r["t_arrival"], r["t_start"])
            self.assertLessEqual(r["t_start"], r["t_first_token"])
            self.assertAlmostEqual(ts[0], r["t_first_token"], places=6)
            self.assertLessEqual(ts[-1], r["t_end"])
            self.assertLessEqual(r["ttft_ms"], r["e2el_ms"])
            self.assertAlmostEqual(r["ttft_ms"], (r["t_first_token"] - r["t_start"]) * 1000, delta=0.01)
            self.assertAlmostEqual(r["tpot_ms"], (r["e2el_ms"] - r["ttft_ms"]) / (outp - 1), delta=0.01)
        self.assertEqual(d["total_output_tokens"], n * outp)
        self.assertEqual(d["total_input_tokens"], n * inp)
        # the server's own counters: the measured requests and the warm-up one, nothing else
        self.assertEqual(counter(m1, "quill:generation_tokens_total") - counter(m0, "quill:generation_tokens_total"),
                         (n + 1) * outp)
        self.assertEqual(counter(m1, "quill:prompt_tokens_total") - counter(m0, "quill:prompt_tokens_total"),
                         (n + 1) * inp)
        self.assertEqual(counter(m1, "quill:request_success_total", 'finished_reason="length"') -
                         counter(m0, "quill:request_success_total", 'finished_reason="length"'), n + 1)
        # all arrive at once, at most 3 in flight: exactly 3 at the peak
        self.assertEqual(d["max_concurrent_requests"], 3)
        self.assertIsNone(d["request_rate"])
        # the summary is made of the per-request values
        ttfts = sorted(r["ttft_ms"] for r in d["requests"])
        self.assertAlmostEqual(d["mean_ttft_ms"], sum(ttfts) / n, delta=0.01)
        self.assertAlmostEqual(d["median_ttft_ms"], (ttfts[2] + ttfts[3]) / 2, delta=0.01)
        self.assertAlmostEqual(d["p99_ttft_ms"], ttfts[4] + 0.95 * (ttfts[5] - ttfts[4]), delta=0.01)
        self.assertAlmostEqual(d["output_throughput"], n * outp / d["duration"], delta=0.01)
        self.assertAlmostEqual(d["request_throughput"], n / d["duration"], delta=0.001)
        last_end = max(r["t_end"] for r in d["requests"])
        self.assertAlmostEqual(d["duration"], last_end, delta=0.001)
        self.assertIsNone(d["goodput"])

    def test_chat_rate_and_goodput(self):
        n, outp = 4, 5
        d, p = self.run_bench("--endpoint", "/v1/chat/completions", "--num-prompts", n, "--input-len", 16,
                              "--output-len", outp, "--request-rate", 20, "--burstiness", 1, "--seed", 3,
                              "--warmup", 0, "--slo-ttft", 1e6)
        self.assertEqual(d["completed"], n)
        arr = [r["t_arrival"] for r in d["requests"]]
        self.assertEqual(arr[0], 0.0)
        self.assertEqual(arr, sorted(arr))
        self.assertGreater(arr[-1], 0.0)
        for r in d["requests"]:
            self.assertEqual(r["output_tokens"], outp)
            self.assertEqual(r["usage_completion_tokens"], outp)
            self.assertGreater(r["usage_prompt_tokens"], 0)  # the chat template's, not ours
            self.assertLessEqual(r["t_arrival"], r["t_start"] + 1e-6)
        # an SLO every request meets: goodput is the request throughput
        self.assertAlmostEqual(d["goodput"], d["request_throughput"], delta=1e-6)
        self.assertIn("Request goodput (req/s):", p.stdout)
        # a TPOT bound nobody meets: goodput 0
        d, _ = self.run_bench("--num-prompts", 2, "--input-len", 8, "--output-len", 4, "--warmup", 0,
                              "--slo-tpot", 0.000001)
        self.assertEqual(d["goodput"], 0.0)

    def expect_fail(self, code, args, *needles):
        p = bench(*args, timeout=300)
        self.assertEqual(p.returncode, code, p.stderr)
        last = p.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("quill bench: "), p.stderr)
        for n in needles:
            self.assertIn(n, last)
        return p

    def test_bad_arguments(self):
        for args, needle in [(["--input-len", 0], "--input-len"), (["--output-len", "x"], "--output-len"),
                             (["--num-prompts", -1], "--num-prompts"), (["--burstiness", 0], "--burstiness"),
                             (["--request-rate", -2], "--request-rate"),
                             (["--endpoint", "/v1/embeddings"], "--endpoint"),
                             (["--base-url", "ftp://h"], "--base-url"),
                             (["--base-url", "http://127.0.0.1:99999"], "--base-url"),
                             (["--frobnicate"], "--frobnicate")]:
            p = self.expect_fail(2, args, needle)
            self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
        p = self.expect_fail(1, ["--base-url", "http://127.0.0.1:1", "--num-prompts", 1], "cannot connect")
        self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)

    def test_server_refusals(self):
        # a model the server does not have: its 404 message, in one line
        self.expect_fail(1, ["--base-url", self.srv.url, "--model", "no-such-model", "--num-prompts", 1],
                         "warm-up", "404", "no-such-model")
        # a prompt longer than the context: every request refused, the count and the reason
        self.expect_fail(1, ["--base-url", self.srv.url, "--input-len", 9000, "--output-len", 4,
                             "--num-prompts", 2, "--warmup", 0], "2 of 2 requests failed", "400")
        # --out in a directory that does not exist
        self.expect_fail(1, ["--base-url", self.srv.url, "--input-len", 4, "--output-len", 2, "--num-prompts", 1,
                             "--warmup", 0, "--out", "/nonexistent/dir/x.json"], "--out", "/nonexistent/dir/x.json")


if __name__ == "__main__":
    H.setup_from_argv()
    H.main()
