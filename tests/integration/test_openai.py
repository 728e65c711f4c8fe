"""The official `openai` Python SDK against quill serve on the default model (SmolLM2-135M-
Instruct): completions and chat, streamed and not, with usage; streamed text equals the
non-streamed text at temperature 0; n, stop, logprobs, the SDK's view of errors; /v1/models."""
import unittest

import harness as H
from harness import Server

try:
    import openai
except ImportError:  # the venv could not be made (no PyPI): say so, skip
    openai = None

CHAT = [{"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is the capital of France?"}]


class OpenAISDK(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(H.default_model(), "--max-num-seqs", "8", "--served-model-name", "smol")
        cls.client = openai.OpenAI(base_url=cls.srv.url + "/v1", api_key="unused", max_retries=0,
                                   timeout=120)
        st, _, tok = cls.srv.post_json("/tokenize", {"prompt": "The capital of France is"})
        cls.prompt_tokens = tok["count"]

    @classmethod
    def tearDownClass(cls):
        cls.srv.assert_clean_exit(unittest.TestCase())

    def test_models(self):
        ms = self.client.models.list()
        self.assertEqual([m.id for m in ms.data], ["smol"])
        self.assertEqual(ms.data[0].owned_by, "quill")

    def test_completion_and_stream_agree(self):
        c = self.client.completions.create(model="smol", prompt="The capital of France is",
                                           max_tokens=24, temperature=0)
        self.assertEqual(c.object, "text_completion")
        self.assertTrue(c.id.startswith("cmpl-"))
        text = c.choices[0].text
        self.assertGreater(len(text), 0)
        self.assertEqual(c.usage.prompt_tokens, self.prompt_tokens)
        self.assertEqual(c.usage.total_tokens, c.usage.prompt_tokens + c.usage.completion_tokens)
        if c.choices[0].finish_reason == "length":
            self.assertEqual(c.usage.completion_tokens, 24)
        chunks = list(self.client.completions.create(model="smol", prompt="The capital of France is",
                                                     max_tokens=24, temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
        streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        self.assertEqual(streamed, text, "streamed text = non-streamed text at temperature 0")
        self.assertEqual([ch.choices[0].finish_reason for ch in chunks if ch.choices][-1],
                         c.choices[0].finish_reason)
        last = chunks[-1]
        self.assertEqual(last.choices, [])
        self.assertEqual(last.usage.completion_tokens, c.usage.completion_tokens)
        self.assertEqual(last.usage.prompt_tokens, c.usage.prompt_tokens)
        self.assertTrue(all(ch.usage is None for ch in chunks[:-1]))

    def test_chat_and_stream_agree(self):
        c = self.client.chat.completions.create(model="smol", messages=CHAT, max_tokens=40, temperature=0)
        self.assertEqual(c.object, "chat.completion")
        msg = c.choices[0].message
        self.assertEqual(msg.role, "assistant")
        self.assertIn("Paris", msg.content)
        self.assertIn(c.choices[0].finish_reason, ("stop", "length"))
        self.assertGreater(c.usage.prompt_tokens, 10)
        stream = self.client.chat.completions.create(model="smol", messages=CHAT, max_tokens=40,
                                                     temperature=0, stream=True,
                                                     stream_options={"include_usage": True})
        parts, roles, finish, usage = [], [], None, None
        for ch in stream:
            if ch.usage:
                usage = ch.usage
            for chc in ch.choices:
                if chc.delta.role:
                    roles.append(chc.delta.role)
                if chc.delta.content:
                    parts.append(chc.delta.content)
                if chc.finish_reason:
                    finish = chc.finish_reason
        self.assertEqual(roles, ["assistant"])
        self.assertEqual("".join(parts), msg.content)
        self.assertEqual(finish, c.choices[0].finish_reason)
        self.assertEqual((usage.prompt_tokens, usage.completion_tokens),
                         (c.usage.prompt_tokens, c.usage.completion_tokens))

    def test_cached_tokens(self):
        long_sys = [{"role": "system", "content": "You answer questions about geography. " * 8}]
        msgs = long_sys + [{"role": "user", "content": "Name a river in Italy."}]
        self.client.chat.completions.create(model="smol", messages=msgs, max_tokens=4, temperature=0)
        c = self.client.chat.completions.create(model="smol", messages=msgs, max_tokens=4, temperature=0)
        self.assertGreater(c.usage.prompt_tokens_details.cached_tokens, 0, "the prefix cache served a repeat")

    def test_n_stop_seed(self):
        c = self.client.completions.create(model="smol", prompt=["Once upon a time", "In a galaxy"],
                                           max_tokens=8, temperature=0.8, seed=11, n=2)
        self.assertEqual(sorted(ch.index for ch in c.choices), [0, 1, 2, 3])
        again = self.client.completions.create(model="smol", prompt=["Once upon a time", "In a galaxy"],
                                               max_tokens=8, temperature=0.8, seed=11, n=2)
        self.assertEqual([ch.text for ch in c.choices], [ch.text for ch in again.choices], "same seed, same text")
        self.assertEqual(c.usage.completion_tokens, sum(1 for _ in c.choices) * 8
                         if all(ch.finish_reason == "length" for ch in c.choices) else c.usage.completion_tokens)
        base = self.client.completions.create(model="smol", prompt="1, 2, 3, 4,", max_tokens=16, temperature=0)
        self.assertIn(" 6,", base.choices[0].text)
        s = self.client.completions.create(model="smol", prompt="1, 2, 3, 4,", max_tokens=16, temperature=0,
                                           stop=[" 6"])
        self.assertEqual(s.choices[0].finish_reason, "stop")
        self.assertEqual(s.choices[0].text, base.choices[0].text.split(" 6")[0])

    def test_logprobs(self):
        c = self.client.chat.completions.create(model="smol", messages=CHAT, max_tokens=5, temperature=0,
                                                logprobs=True, top_logprobs=3)
        lp = c.choices[0].logprobs.content
        self.assertEqual(len(lp), c.usage.completion_tokens)
        for t in lp:
            self.assertLessEqual(t.logprob, 0)
            self.assertEqual(len(t.top_logprobs), 3)
            self.assertEqual(t.top_logprobs[0].token, t.token, "greedy: the chosen token is the top one")
        c = self.client.completions.create(model="smol", prompt="The sky is", max_tokens=4, temperature=0,
                                           logprobs=2)
        self.assertEqual(len(c.choices[0].logprobs.tokens), 4)
        self.assertEqual(c.choices[0].logprobs.text_offset[0], 0)

    def test_logit_bias_and_echo(self):
        c = self.client.completions.create(model="smol", prompt="The capital of France is", max_tokens=3,
                                           temperature=0, echo=True)
        self.assertTrue(c.choices[0].text.startswith("The capital of France is"))
        st, _, tok = self.srv.post_json("/tokenize", {"prompt": " Paris", "add_special_tokens": False})
        paris = tok["tokens"][0]
        c = self.client.completions.create(model="smol", prompt="The capital of France is", max_tokens=1,
                                           temperature=0, logit_bias={str(paris): -100})
        self.assertNotEqual(c.choices[0].text, " Paris")

    def test_errors(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.completions.create(model="smol", prompt="hi", max_tokens=10, temperature=5)
        self.assertEqual(cm.exception.status_code, 400)
        self.assertEqual(cm.exception.body["param"], "temperature")
        with self.assertRaises(openai.NotFoundError) as cm:
            self.client.completions.create(model="gpt-4", prompt="hi", max_tokens=1)
        self.assertEqual(cm.exception.body["code"], "model_not_found")
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.completions.create(model="smol", prompt="word " * 9000, max_tokens=1)
        self.assertEqual(cm.exception.body["code"], "context_length_exceeded")
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.chat.completions.create(model="smol", messages=CHAT, max_tokens=9000)
        self.assertEqual(cm.exception.body["code"], "context_length_exceeded")


if __name__ == "__main__":
    H.setup_from_argv()
    if openai is None:
        H.skip_all("the openai package is not installed (scripts/test-venv.sh could not install it)")
    if H.default_model() is None:
        H.skip_all("QL_DEFAULT_MODEL unset or missing (make test sets it)")
    if H.ASAN:
        H.skip_all("the default model is too slow under ASan; the raw-socket tests cover the server there")
    H.main()
