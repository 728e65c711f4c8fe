#!/usr/bin/env python3
"""tools/reference/gen-chat.py: chat-template goldens rendered by jinja2.

    gen-chat.py [--model GGUF] [--out DIR]

Writes DIR/<family>.json (default DIR: tests/fixtures/chat) for:
  smollm2   the default model's own tokenizer.chat_template, read from the GGUF
  chatml    DIR/templates/chatml.jinja   (Qwen2's ChatML, default system prompt)
  llama3    DIR/templates/llama3.jinja   (Meta Llama 3 Instruct)
  llama2    DIR/templates/llama2.jinja   (Llama 2 chat, <<SYS>>)
  mistral   DIR/templates/mistral.jinja  (Mistral / Mixtral Instruct, [INST])

Rendering follows Hugging Face apply_chat_template: a sandboxed jinja2 environment with
trim_blocks and lstrip_blocks, raise_exception() available to the template, bos_token and
eos_token passed as variables. A case whose template raises records the message under
"error" instead of "expected". Run it with the reference venv's python (setup.sh).
"""
import argparse
import json
import os
import sys

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# (family, template file or None for the model's, bos_token, eos_token, detected format)
FAMILIES = [
    ("smollm2", None, None, None, "chatml"),
    ("chatml", "chatml.jinja", "", "<|im_end|>", "chatml"),
    ("llama3", "llama3.jinja", "<|begin_of_text|>", "<|eot_id|>", "llama3"),
    ("llama2", "llama2.jinja", "<s>", "</s>", "llama2"),
    ("mistral", "mistral.jinja", "<s>", "</s>", "mistral"),
]


def u(c):
    return {"role": "user", "content": c}


def a(c):
    return {"role": "assistant", "content": c}


def s(c):
    return {"role": "system", "content": c}


# (name, messages, add_generation_prompt): the same conversations for every family.
CASES = [
    ("user", [u("Hello!")], True),
    ("user-no-gen", [u("Hello!")], False),
    ("system-user", [s("You are terse."), u("What is 2+2?")], True),
    ("system-user-no-gen", [s("You are terse."), u("What is 2+2?")], False),
    ("multi-turn", [u("Hi"), a("Hello! How can I help?"), u("Tell me a joke.")], True),
    ("multi-turn-no-gen", [u("Hi"), a("Hello! How can I help?"), u("Tell me a joke.")], False),
    ("system-multi-turn",
     [s("Answer in French."), u("Hi"), a("Bonjour !"), u("Thanks"), a("De rien.")], False),
    ("ends-with-assistant-gen", [u("Q"), a("A")], True),
    ("newlines-unicode",
     [u("Line one\nLine two\n\n  indented\ttab\n你好，世界 😀 é (e\u0301) مرحبا")], True),
    ("system-newlines-unicode",
     [s("Rules:\n1. Be kind.\n2. Use émoji 👍"), u("Héllo\nwörld")], True),
    ("surrounding-whitespace", [u("  padded both sides \t\n"), a("\n answer \n")], False),
    ("unicode-whitespace", [u("\u3000\u00a0wide and nbsp\u2003\u0085"), a("\u2028x\u200b")], True),
    ("empty-content", [u("")], True),
    ("empty-system", [s(""), u("hi")], True),
    ("markup-in-content", [u("<|im_start|>[INST] <<SYS>> {{ not jinja }} {% raw %}")], True),
    # roles that do not alternate: Llama 2 and Mistral raise, the others render
    ("two-users", [u("one"), u("two")], True),
    ("assistant-first", [a("I speak first."), u("ok")], True),
    ("system-not-first", [u("hi"), s("late system")], True),
    ("system-after-pair", [u("hi"), a("hello"), s("late system")], True),
    ("two-systems", [s("first"), s("second"), u("hi")], True),
    ("system-only", [s("just a system prompt")], True),
]


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env


def model_template(path):
    import gguf

    r = gguf.GGUFReader(path)

    def field_str(key):
        f = r.fields[key]
        return bytes(f.parts[f.data[0]]).decode("utf-8")

    def token_text(key):
        f = r.fields[key]
        tid = int(f.parts[f.data[0]][0])
        toks = r.fields["tokenizer.ggml.tokens"]
        return bytes(toks.parts[toks.data[tid]]).decode("utf-8")

    return (field_str("tokenizer.chat_template"), token_text("tokenizer.ggml.bos_token_id"),
            token_text("tokenizer.ggml.eos_token_id"))


def read_template(path):
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    # A model's template string does not end with a newline; the file's last one is
    # editorial (jinja2 would drop it anyway: keep_trailing_newline is off).
    return text[:-1] if text.endswith("\n") else text


def default_system(tmpl, bos, eos):
    """The system prompt a ChatML template inserts when the first message is not a system
    one, found by rendering: jinja2 decides, not the C code's heuristics."""
    out = tmpl.render(messages=[u("x")], add_generation_prompt=False, bos_token=bos,
                      eos_token=eos)
    head = "<|im_start|>system\n"
    if not out.startswith(head):
        return None
    return out[len(head):out.index("<|im_end|>")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.environ.get("QL_DEFAULT_MODEL") or os.path.expanduser(
        "~/.cache/quill/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "chat"))
    args = ap.parse_args()

    env = make_env()
    for family, fname, bos, eos, fmt in FAMILIES:
        if fname is None:
            text, bos, eos = model_template(args.model)
            source = "tokenizer.chat_template of " + os.path.basename(args.model)
        else:
            text = read_template(os.path.join(args.out, "templates", fname))
            source = "templates/" + fname
        tmpl = env.from_string(text)
        cases = []
        for name, messages, gen in CASES:
            case = {"name": name, "messages": messages, "add_generation_prompt": gen,
                    "bos_token": bos, "eos_token": eos}
            try:
                case["expected"] = tmpl.render(messages=messages, add_generation_prompt=gen,
                                               bos_token=bos, eos_token=eos)
            except jinja2.exceptions.TemplateError as e:
                case["error"] = str(e)
            cases.append(case)
        doc = {
            "source": source,
            "format": fmt,
            "default_system": default_system(tmpl, bos, eos) if fmt == "chatml" else None,
            "bos_token": bos,
            "eos_token": eos,
            "template": text,
            "cases": cases,
        }
        out = os.path.join(args.out, family + ".json")
        with open(out, "w", encoding="utf-8", newline="\n") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
        n_err = sum("error" in c for c in cases)
        print(f"{out}: {len(cases)} cases ({n_err} raise)", file=sys.stderr)


if __name__ == "__main__":
    main()
