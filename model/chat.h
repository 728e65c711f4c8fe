/*
 * model/chat.h — chat templates: a conversation (system / user / assistant messages) to the
 * prompt text a model was trained on.
 *
 * quill does not run Jinja. It knows four template families and renders each in C exactly as
 * the official Jinja template does under Hugging Face's apply_chat_template (the goldens in
 * tests/fixtures/chat/ come from jinja2, tools/reference/gen-chat.py):
 *   chatml   <|im_start|>role\n...<|im_end|>\n      SmolLM2, Qwen2; with the default system
 *                                                   prompt the model's template inserts
 *   llama3   <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>   Meta Llama 3
 *   llama2   <s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] ... </s>    Llama 2 chat
 *   mistral  <s>[INST] ... [/INST]...</s>           Mistral / Mixtral Instruct v0.1, v0.2
 * The family comes from the model's `tokenizer.chat_template` text (ql_chat_detect) or from a
 * name (`--chat-template`). A template quill does not recognise is an error, never a guess.
 *
 * NOTE(bos): like the official templates, the rendering contains the BOS token's text where
 * the template puts it (llama3, llama2, mistral). Tokenize it with special tokens parsed and
 * WITHOUT adding another BOS (as apply_chat_template(tokenize=True) does).
 */
#ifndef QL_MODEL_CHAT_H
#define QL_MODEL_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ql_chat_format_e {
    QL_CHAT_FORMAT_UNKNOWN = 0,
    QL_CHAT_FORMAT_CHATML = 1,
    QL_CHAT_FORMAT_LLAMA3 = 2,
    QL_CHAT_FORMAT_LLAMA2 = 3,
    QL_CHAT_FORMAT_MISTRAL = 4,
} ql_chat_format_t;

/** "chatml", "llama3", "llama2", "mistral" or "unknown". Static; never NULL. Thread: any. */
QL_API const char *ql_chat_format_name(ql_chat_format_t f);
/** Parses a format name (not "auto"). @return 0 or QL_EINVAL. Thread: any. */
QL_API int ql_chat_format_parse(const char *name, ql_chat_format_t *out);

/** Recognises the family of a Jinja template text `tmpl[0..len)` by robust markers:
 *  `<|im_start|>` → chatml; `<|start_header_id|>` and `<|end_header_id|>` → llama3;
 *  `[INST]` with `<<SYS>>` → llama2; `[INST]` without → mistral. Variants that render
 *  differently from the family's official template (Llama 3.1+'s date header, Mistral v7's
 *  [SYSTEM_PROMPT]) are QL_CHAT_FORMAT_UNKNOWN. Thread: any. */
QL_API ql_chat_format_t ql_chat_detect(const char *tmpl, size_t len);

typedef struct ql_chat_s ql_chat_t; /* opaque; immutable after init */

typedef struct ql_chat_params_s {
    const char *name;      /* NULL or "auto": recognise `tmpl`; else a ql_chat_format_name() */
    const char *tmpl;      /* the model's tokenizer.chat_template (need not be NUL-terminated);
                              NULL when the model has none. Read during init only. */
    size_t tmpl_len;
    const char *bos_token; /* the BOS token's text; NULL = the family's usual one ("<s>",
                              "<|begin_of_text|>"); copied */
    const char *eos_token; /* the EOS token's text; NULL = the family's usual one; copied */
} ql_chat_params_t;

/** Chooses the template family (by name, else by ql_chat_detect on `tmpl`) and, for chatml,
 *  the default system prompt the model's template inserts when the first message is not a
 *  system one (found as the literal `'<|im_start|>system\n...<|im_end|>` in `tmpl`; none when
 *  absent). On error writes one line into err[errlen] and returns QL_EINVAL (`name` is not a
 *  known format), QL_ENOENT (auto, and the model has no template) or QL_EUNSUPPORTED (auto,
 *  and the template is not one quill knows: the line names what it saw and suggests
 *  --chat-template). On success *out is owned by the caller: release with ql_chat_free().
 *  Thread: any. */
QL_API int ql_chat_init(const ql_chat_params_t *p, ql_chat_t **out, char *err, size_t errlen);
QL_API void ql_chat_free(ql_chat_t *c); /* NULL is a no-op */

QL_API ql_chat_format_t ql_chat_format(const ql_chat_t *c);
/** The default system prompt (NUL-terminated, borrowed from `c`), or NULL when none. */
QL_API const char *ql_chat_default_system(const ql_chat_t *c);

typedef struct ql_chat_msg_s {
    const char *role;    /* "system", "user" or "assistant" (NUL-terminated) */
    const char *content; /* UTF-8, content_len bytes (need not be NUL-terminated) */
    size_t content_len;
} ql_chat_msg_t;

/** Renders msgs[0..n_msgs) in order, then, when add_generation_prompt is set and the family
 *  has one, the assistant header (chatml, llama3; the llama2 and mistral templates have
 *  none). *out receives a malloc'd NUL-terminated string the caller frees with free(), and
 *  *out_len its length without the NUL.
 *  NOTE(alloc): an allocated string rather than a caller buffer returning -(needed): a
 *  rendering shorter than 17 bytes would make -(needed) look like a QL_E* code.
 *  @return 0; QL_EINVAL (no messages, an unknown role, or roles the family's template rejects:
 *  llama2 and mistral require user/assistant alternation, mistral has no system role; err
 *  then carries the official template's own message and the offending index); QL_ENOMEM;
 *  QL_EOVERFLOW. On error *out is NULL. Thread: any; `c` is only read. */
QL_API int ql_chat_render(const ql_chat_t *c, const ql_chat_msg_t *msgs, size_t n_msgs,
                          int add_generation_prompt, char **out, size_t *out_len, char *err,
                          size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* QL_MODEL_CHAT_H */
