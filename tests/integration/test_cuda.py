"""`quill serve --backend cuda` on a GPU: it serves a random-weight model whose head size the CUDA
kernels run, and a real device fault (QL_CUDA_TEST_TRAP_AFTER: a kernel executes a trap
instruction) ends the request in flight with an explicit error, turns /ready 503 and makes the
process exit 1. Skips (77) without a CUDA build or a device."""
import json
import os
import subprocess
import unittest

import harness as H
from harness import Server, Sock

_model = None


def cuda_model():
    """Llama shape with 64-wide heads (GQA 4:2), a 4096-token context."""
    global _model
    if _model is None:
        shape = os.path.join(H.TMP, "cuda.json")
        with open(shape, "w") as f:
            json.dump({"arch": "llama", "n_layer": 2, "n_embd": 256, "n_head": 4, "n_head_kv": 2,
                       "n_ff": 512, "n_vocab": 512, "n_ctx": 4096, "rope_freq_base": 10000,
                       "rms_eps": 1e-5, "tied": True}, f)
        path = os.path.join(H.TMP, "cuda.gguf")
        subprocess.run([H.QUILL, "mkmodel", "--config", shape, "-o", path], check=True,
                       stdout=subprocess.DEVNULL, timeout=60)
        _model = path
    return _model


def completion(max_tokens, stream):
    body = json.dumps({"prompt": "hello", "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": stream}).encode()
    return (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


class Cuda(unittest.TestCase):
    def test_serves(self):
        srv = Server(cuda_model(), "--backend", "cuda")
        try:
            self.assertIn("cuda backend:", srv.log_text())
            st, _, body = srv.post_json("/v1/completions", {"prompt": "hello", "max_tokens": 24,
                                                            "temperature": 0, "ignore_eos": True})
            self.assertEqual(st, 200, body)
            self.assertEqual(body["usage"]["completion_tokens"], 24)
            # the same request again: greedy decoding on the device is deterministic
            st, _, again = srv.post_json("/v1/completions", {"prompt": "hello", "max_tokens": 24,
                                                             "temperature": 0, "ignore_eos": True})
            self.assertEqual(st, 200)
            self.assertEqual(again["choices"][0]["text"], body["choices"][0]["text"])
        finally:
            srv.assert_clean_exit(self)

    def test_device_fault(self):
        srv = Server(cuda_model(), "--backend", "cuda", env={"QL_CUDA_TEST_TRAP_AFTER": "20"})
        k = Sock(srv.port, timeout=60)
        k.send(completion(2000, True) + b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        st, _, body = k.read_response(timeout=60)
        self.assertEqual(st, 200)
        ev = H.sse_events(body)
        self.assertEqual(ev[-1], "[DONE]")
        err = json.loads(ev[-2])["error"]
        self.assertEqual(err["type"], "server_error")
        self.assertEqual(err["code"], "backend_failure")
        st, _, body = k.read_response(timeout=30)
        self.assertEqual(st, 503)
        rc = srv.proc.wait(timeout=60)
        self.assertEqual(rc, 1, "a device fault exits non-zero")
        log = srv.log_text()
        self.assertIn("CUDA backend faulted", log)
        self.assertIn("backend failed", log)


if __name__ == "__main__":
    H.setup_from_argv()
    # "cuda: compiled in, 1 device(s)" / "cuda: compiled in, 0 device(s)" / "cuda: not compiled in"
    out = subprocess.run([H.QUILL, "--version"], capture_output=True, text=True, timeout=30).stdout
    line = next((x for x in out.splitlines() if x.startswith("cuda:")), "cuda: ?")
    if "compiled in," not in line or " 0 device" in line:
        H.skip_all("no CUDA backend or device here (quill --version: %s)" % line)
    H.main()
