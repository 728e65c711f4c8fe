"""Speculative decoding through the real server: `quill serve --spec-method ngram` on a random
tiny model gives at temperature 0 the text it gives with speculation turned off for the request
(num_speculative_tokens 0), reports drafted tokens in usage.completion_tokens_details (streamed
and not), counts them in /metrics exactly, refuses a bad num_speculative_tokens with 400, and
ends at baseline (no KV block held)."""
import json
import unittest

import harness as H
from harness import Server

# a repetitive prompt: n-gram lookup finds the continuation of its own tokens
PROMPT = "one two three four, one two three four, one two three four, one two three four, one two"


class Spec(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(H.tiny_model(), "--spec-method", "ngram", "--num-speculative-tokens", "4",
                         "--spec-fixed-k")

    @classmethod
    def tearDownClass(cls):
        cls.srv.assert_clean_exit(unittest.TestCase())

    def complete(self, **kw):
        body = {"prompt": PROMPT, "max_tokens": 48, "temperature": 0, "ignore_eos": True}
        body.update(kw)
        st, _, r = self.srv.post_json("/v1/completions", body)
        self.assertEqual(st, 200, r)
        return r

    def test_same_text_and_counts(self):
        m0 = self.srv.metrics()
        plain = self.complete(num_speculative_tokens=0)
        self.assertNotIn("completion_tokens_details", plain["usage"])
        spec = self.complete()
        self.assertEqual(spec["choices"][0]["text"], plain["choices"][0]["text"])
        self.assertEqual(spec["usage"]["completion_tokens"], 48)
        d = spec["usage"]["completion_tokens_details"]
        acc, rej = d["accepted_prediction_tokens"], d["rejected_prediction_tokens"]
        self.assertGreater(acc + rej, 0)
        # n = 2, each choice with its own drafts, counted together
        two = self.complete(n=2)
        d2 = two["usage"]["completion_tokens_details"]
        m1 = self.srv.wait_baseline()
        drafted = m1["quill:spec_decode_num_draft_tokens_total"] - m0["quill:spec_decode_num_draft_tokens_total"]
        accepted = m1["quill:spec_decode_num_accepted_tokens_total"] - m0["quill:spec_decode_num_accepted_tokens_total"]
        self.assertEqual(accepted, acc + d2["accepted_prediction_tokens"])
        self.assertEqual(drafted, acc + rej + d2["accepted_prediction_tokens"] + d2["rejected_prediction_tokens"])
        self.assertGreater(m1["quill:spec_decode_num_drafts_total"], 0)
        rate = m1["quill:spec_decode_acceptance_rate"]
        self.assertAlmostEqual(rate, m1["quill:spec_decode_num_accepted_tokens_total"] /
                               m1["quill:spec_decode_num_draft_tokens_total"], places=9)
        self.assertGreaterEqual(m1["quill:spec_decode_mean_accepted_length"], 1.0)

    def test_stream_usage(self):
        st, _, body = self.srv.request("POST", "/v1/completions", {
            "prompt": PROMPT, "max_tokens": 32, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}})
        self.assertEqual(st, 200)
        events = H.sse_events(body)
        self.assertEqual(events[-1], "[DONE]")
        usage = json.loads(events[-2])["usage"]
        self.assertEqual(usage["completion_tokens"], 32)
        self.assertIn("completion_tokens_details", usage)
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-2]
                       if json.loads(e)["choices"])
        plain = self.complete(num_speculative_tokens=0, max_tokens=32)
        self.assertEqual(text, plain["choices"][0]["text"])

    def test_bad_value(self):
        for v in (17, -1, "4", 1.5):
            st, _, r = self.srv.post_json("/v1/completions", {"prompt": "hi", "num_speculative_tokens": v})
            self.assertEqual(st, 400, (v, r))
            self.assertEqual(r["error"]["param"], "num_speculative_tokens")


if __name__ == "__main__":
    H.setup_from_argv()
    H.main()
