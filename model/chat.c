/*
 * model/chat.c — the four chat-template families of model/chat.h, rendered in C.
 *
 * Each renderer transcribes one official Jinja template statement by statement, including
 * its quirks (Llama 3's `| trim` and Llama 2's `.strip()` are Python's str.strip(), which
 * knows Unicode whitespace; Llama 2 silently drops a system message at an odd position;
 * Mistral has no system role). tests/unit/model/test-chat.c compares every rendering with
 * jinja2's, byte for byte.
 */
#define QL_LOG_MODULE "chat"
#include "model/chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ql_chat_s {
    ql_chat_format_t format;
    char *default_system; /* chatml only; NULL = the template inserts none */
    char *bos;
    char *eos;
};

static const char *const k_format_names[] = {
    [QL_CHAT_FORMAT_UNKNOWN] = "unknown", [QL_CHAT_FORMAT_CHATML] = "chatml",
    [QL_CHAT_FORMAT_LLAMA3] = "llama3",   [QL_CHAT_FORMAT_LLAMA2] = "llama2",
    [QL_CHAT_FORMAT_MISTRAL] = "mistral",
};

/* The official templates' own messages: errors carry them verbatim. */
#define MSG_ALTERNATE "Conversation roles must alternate user/assistant/user/assistant/..."
#define MSG_ONLY_USER_ASSISTANT "Only user and assistant roles are supported!"

const char *ql_chat_format_name(ql_chat_format_t f) {
    if ((int)f < 0 || (size_t)f >= QL_ARRAY_LEN(k_format_names)) return "unknown";
    return k_format_names[f];
}

int ql_chat_format_parse(const char *name, ql_chat_format_t *out) {
    if (!name || !out) return QL_EINVAL;
    for (size_t i = 1; i < QL_ARRAY_LEN(k_format_names); i++) {
        if (strcmp(name, k_format_names[i]) == 0) {
            *out = (ql_chat_format_t)i;
            return 0;
        }
    }
    return QL_EINVAL;
}

/* ---- text helpers ---- */

/* Offset of the first `needle` in s[from..n), or -1. */
static long find_from(const char *s, size_t n, size_t from, const char *needle) {
    size_t m = strlen(needle);
    if (m == 0 || m > n) return -1;
    for (size_t i = from; i + m <= n; i++) {
        if (s[i] == needle[0] && memcmp(s + i, needle, m) == 0) return (long)i;
    }
    return -1;
}

static int contains(const char *s, size_t n, const char *needle) {
    return find_from(s, n, 0, needle) >= 0;
}

/* Decodes one UTF-8 code point at s[0..n). Returns its byte length (1..4), or 0 for an
 * invalid or truncated sequence. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    unsigned c = s[0];
    size_t len;
    uint32_t v;
    if (c < 0x80) { *cp = c; return 1; }
    if ((c & 0xe0) == 0xc0) { len = 2; v = c & 0x1f; }
    else if ((c & 0xf0) == 0xe0) { len = 3; v = c & 0x0f; }
    else if ((c & 0xf8) == 0xf0) { len = 4; v = c & 0x07; }
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    *cp = v;
    return len;
}

/* NOTE(strip): Python's str.isspace(), which jinja2's `trim` and a template's `.strip()`
 * use: ASCII whitespace, the separators U+001C..U+001F, NEL, NBSP and Unicode's Zs/Zl/Zp
 * spaces. Not U+200B (zero width space), which Python does not strip either. */
static int py_isspace(uint32_t cp) {
    if (cp >= 0x09 && cp <= 0x0d) return 1;
    if (cp >= 0x1c && cp <= 0x20) return 1;
    switch (cp) {
    case 0x85: case 0xa0: case 0x1680: case 0x2028: case 0x2029: case 0x202f: case 0x205f:
    case 0x3000:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200a;
    }
}

/* Narrows s[*b..*e) to Python's s.strip(). Invalid UTF-8 counts as non-space. */
static void py_strip(const char *s, size_t *b, size_t *e) {
    const unsigned char *u = (const unsigned char *)s;
    uint32_t cp;
    while (*b < *e) {
        size_t l = utf8_decode(u + *b, *e - *b, &cp);
        if (l == 0 || !py_isspace(cp)) break;
        *b += l;
    }
    while (*e > *b) {
        size_t st = *e - 1; /* back to the lead byte of the last character, at most 3 steps */
        while (st > *b && (u[st] & 0xc0) == 0x80 && *e - st < 4) st--;
        size_t l = utf8_decode(u + st, *e - st, &cp);
        if (l != *e - st || !py_isspace(cp)) break;
        *e = st;
    }
}

/* ---- output buffer ---- */

typedef struct sbuf_s {
    char *p;
    size_t len, cap;
    int rc; /* first error; later appends are no-ops */
} sbuf_t;

static void put(sbuf_t *b, const char *s, size_t n) {
    if (b->rc) return;
    size_t need;
    if (ql_size_add(b->len, n, &need) || ql_size_add(need, 1, &need)) {
        b->rc = QL_EOVERFLOW;
        return;
    }
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->rc = QL_ENOMEM;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void put_s(sbuf_t *b, const char *s) { put(b, s, strlen(s)); }

/* Applies Python's strip() to what was appended since offset `from`. */
static void strip_since(sbuf_t *b, size_t from) {
    if (b->rc || !b->p) return;
    size_t s = from, e = b->len;
    py_strip(b->p, &s, &e);
    memmove(b->p + from, b->p + s, e - s);
    b->len = from + (e - s);
    b->p[b->len] = '\0';
}

/* ---- detection ---- */

/* Recognises the family; for a known family's variant that quill does not render, returns
 * UNKNOWN and sets *variant to a description for the error line. */
static ql_chat_format_t detect(const char *t, size_t n, const char **variant) {
    *variant = NULL;
    if (!t || n == 0) return QL_CHAT_FORMAT_UNKNOWN;
    if (contains(t, n, "<|im_start|>")) return QL_CHAT_FORMAT_CHATML;
    if (contains(t, n, "<|start_header_id|>") && contains(t, n, "<|end_header_id|>")) {
        if (contains(t, n, "Cutting Knowledge Date")) {
            *variant = "Llama 3.1+ (a 'Cutting Knowledge Date' system header)";
            return QL_CHAT_FORMAT_UNKNOWN;
        }
        return QL_CHAT_FORMAT_LLAMA3;
    }
    if (contains(t, n, "[INST]")) {
        if (contains(t, n, "<<SYS>>")) return QL_CHAT_FORMAT_LLAMA2;
        if (contains(t, n, "[SYSTEM_PROMPT]")) {
            *variant = "Mistral v7 ([SYSTEM_PROMPT])";
            return QL_CHAT_FORMAT_UNKNOWN;
        }
        if (contains(t, n, "[AVAILABLE_TOOLS]")) {
            *variant = "Mistral v0.3+ ([AVAILABLE_TOOLS], system text folded into the last user turn)";
            return QL_CHAT_FORMAT_UNKNOWN;
        }
        return QL_CHAT_FORMAT_MISTRAL;
    }
    return QL_CHAT_FORMAT_UNKNOWN;
}

ql_chat_format_t ql_chat_detect(const char *tmpl, size_t len) {
    const char *variant;
    return detect(tmpl, len, &variant);
}

/* The default system prompt of a ChatML template: a string literal that starts
 * `<|im_start|>system` + newline (a real one or the escape \n) and runs, with no end of the
 * literal in between, to `<|im_end|>`. `'<|im_start|>system\n' + messages[0]['content']`
 * is not one (the literal ends first). Jinja's escapes in the literal are decoded. Returns
 * a malloc'd string or NULL. */
static char *find_default_system(const char *t, size_t n) {
    static const char marker[] = "<|im_start|>system";
    const size_t mlen = sizeof marker - 1;
    for (long at = find_from(t, n, 0, marker); at >= 0;
         at = find_from(t, n, (size_t)at + 1, marker)) {
        size_t i = (size_t)at;
        if (i == 0 || (t[i - 1] != '\'' && t[i - 1] != '"')) continue;
        char quote = t[i - 1];
        size_t j = i + mlen;
        if (j < n && t[j] == '\n') j += 1;
        else if (j + 1 < n && t[j] == '\\' && t[j + 1] == 'n') j += 2;
        else continue;
        sbuf_t b = {0};
        int ok = 0;
        while (j < n) {
            if (n - j >= 10 && memcmp(t + j, "<|im_end|>", 10) == 0) {
                ok = 1;
                break;
            }
            char c = t[j];
            if (c == quote) break;
            if (c == '\\' && j + 1 < n) {
                char e = t[j + 1], d;
                switch (e) {
                case 'n': d = '\n'; break;
                case 't': d = '\t'; break;
                case 'r': d = '\r'; break;
                case '\\': case '\'': case '"': d = e; break;
                default: d = 0; break; /* kept as written, like Python's unicode-escape */
                }
                if (d) put(&b, &d, 1);
                else put(&b, t + j, 2);
                j += 2;
                continue;
            }
            put(&b, &c, 1);
            j++;
        }
        if (ok && b.rc == 0) {
            if (!b.p) return ql_xstrdup("");
            return b.p;
        }
        free(b.p);
    }
    return NULL;
}

/* Writes the first bytes of the template into out[outlen], control characters escaped,
 * cut at a UTF-8 character boundary, for an error line. */
static void snippet(const char *t, size_t n, char *out, size_t outlen) {
    size_t o = 0, i = 0;
    const size_t max_in = 40;
    while (i < n && i < max_in && o + 5 < outlen) {
        unsigned char c = (unsigned char)t[i];
        if (c == '\n') { out[o++] = '\\'; out[o++] = 'n'; i++; continue; }
        if (c < 0x20 || c == 0x7f) { o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c); i++; continue; }
        if (c >= 0x80) {
            uint32_t cp;
            size_t l = utf8_decode((const unsigned char *)t + i, n - i, &cp);
            if (l == 0) { o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c); i++; continue; }
            if (o + l + 1 >= outlen) break;
            memcpy(out + o, t + i, l);
            o += l;
            i += l;
            continue;
        }
        out[o++] = (char)c;
        i++;
    }
    if (i < n && o + 4 < outlen) { memcpy(out + o, "...", 3); o += 3; }
    out[o < outlen ? o : outlen - 1] = '\0';
}

/* ---- init ---- */

static void family_tokens(ql_chat_format_t f, const char **bos, const char **eos) {
    switch (f) {
    case QL_CHAT_FORMAT_LLAMA3: *bos = "<|begin_of_text|>"; *eos = "<|eot_id|>"; break;
    case QL_CHAT_FORMAT_LLAMA2:
    case QL_CHAT_FORMAT_MISTRAL: *bos = "<s>"; *eos = "</s>"; break;
    default: *bos = ""; *eos = "<|im_end|>"; break;
    }
}

#define SET_ERR(...)                                                                 \
    do {                                                                             \
        if (err && errlen) snprintf(err, errlen, __VA_ARGS__);                       \
    } while (0)

int ql_chat_init(const ql_chat_params_t *p, ql_chat_t **out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!p || !out || (p->tmpl == NULL && p->tmpl_len != 0)) return QL_EINVAL;
    *out = NULL;
    ql_chat_format_t f;
    if (p->name && strcmp(p->name, "auto") != 0) {
        if (ql_chat_format_parse(p->name, &f) != 0) {
            SET_ERR("unknown chat template name '%s' (accepted: auto, chatml, llama3, llama2, mistral)",
                    p->name);
            return QL_EINVAL;
        }
    } else {
        if (!p->tmpl || p->tmpl_len == 0) {
            SET_ERR("the model has no chat template (tokenizer.chat_template); choose one with "
                    "--chat-template chatml|llama3|llama2|mistral");
            return QL_ENOENT;
        }
        const char *variant;
        f = detect(p->tmpl, p->tmpl_len, &variant);
        if (f == QL_CHAT_FORMAT_UNKNOWN) {
            char head[96];
            snippet(p->tmpl, p->tmpl_len, head, sizeof head);
            if (variant) {
                SET_ERR("the model's chat template is %s, which quill does not render (it starts "
                        "\"%s\"); choose a format with --chat-template chatml|llama3|llama2|mistral",
                        variant, head);
            } else {
                SET_ERR("unknown chat template (it starts \"%s\" and has none of <|im_start|>, "
                        "<|start_header_id|>, [INST]); quill renders chatml, llama3, llama2 and "
                        "mistral: choose one with --chat-template NAME",
                        head);
            }
            return QL_EUNSUPPORTED;
        }
    }
    ql_chat_t *c = ql_xcalloc(1, sizeof *c);
    c->format = f;
    const char *bos, *eos;
    family_tokens(f, &bos, &eos);
    c->bos = ql_xstrdup(p->bos_token ? p->bos_token : bos);
    c->eos = ql_xstrdup(p->eos_token ? p->eos_token : eos);
    if (f == QL_CHAT_FORMAT_CHATML && p->tmpl) c->default_system = find_default_system(p->tmpl, p->tmpl_len);
    QL_LOG_DEBUG("chat template %s%s%s", ql_chat_format_name(f),
                 c->default_system ? ", default system prompt: " : "",
                 c->default_system ? c->default_system : "");
    *out = c;
    return 0;
}

void ql_chat_free(ql_chat_t *c) {
    if (!c) return;
    free(c->default_system);
    free(c->bos);
    free(c->eos);
    free(c);
}

ql_chat_format_t ql_chat_format(const ql_chat_t *c) { return c ? c->format : QL_CHAT_FORMAT_UNKNOWN; }

const char *ql_chat_default_system(const ql_chat_t *c) { return c ? c->default_system : NULL; }

/* ---- rendering ---- */

typedef enum role_e { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT } role_t;

static int role_of(const char *r, role_t *out) {
    if (strcmp(r, "system") == 0) *out = ROLE_SYSTEM;
    else if (strcmp(r, "user") == 0) *out = ROLE_USER;
    else if (strcmp(r, "assistant") == 0) *out = ROLE_ASSISTANT;
    else return QL_EINVAL;
    return 0;
}

static void put_content(sbuf_t *b, const ql_chat_msg_t *m) { put(b, m->content, m->content_len); }

/* SmolLM2's / Qwen2's template:
 *   for m: [first and messages[0].role != system: <|im_start|>system\n DEFAULT <|im_end|>\n]
 *          <|im_start|> role \n content <|im_end|>\n
 *   [add_generation_prompt: <|im_start|>assistant\n] */
static void render_chatml(const ql_chat_t *c, const ql_chat_msg_t *m, const role_t *r, size_t n,
                          int gen, sbuf_t *b) {
    for (size_t i = 0; i < n; i++) {
        if (i == 0 && c->default_system && r[0] != ROLE_SYSTEM) {
            put_s(b, "<|im_start|>system\n");
            put_s(b, c->default_system);
            put_s(b, "<|im_end|>\n");
        }
        put_s(b, "<|im_start|>");
        put_s(b, m[i].role);
        put_s(b, "\n");
        put_content(b, &m[i]);
        put_s(b, "<|im_end|>\n");
    }
    if (gen) put_s(b, "<|im_start|>assistant\n");
}

/* Meta Llama 3 Instruct:
 *   for m: [first: bos] <|start_header_id|> role <|end_header_id|>\n\n (content | trim) <|eot_id|>
 *   [add_generation_prompt: <|start_header_id|>assistant<|end_header_id|>\n\n] */
static void render_llama3(const ql_chat_t *c, const ql_chat_msg_t *m, size_t n, int gen, sbuf_t *b) {
    for (size_t i = 0; i < n; i++) {
        if (i == 0) put_s(b, c->bos);
        put_s(b, "<|start_header_id|>");
        put_s(b, m[i].role);
        put_s(b, "<|end_header_id|>\n\n");
        size_t from = b->len;
        put_content(b, &m[i]);
        strip_since(b, from);
        put_s(b, "<|eot_id|>");
    }
    if (gen) put_s(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static int role_error(const ql_chat_t *c, const char *msg, size_t i, const char *role, char *err,
                      size_t errlen) {
    SET_ERR("%s chat template: %s (messages[%zu] has role '%s')", ql_chat_format_name(c->format), msg,
            i, role);
    return QL_EINVAL;
}

/* Llama 2 chat: a leading system message is folded into the first user turn.
 *   loop = messages[1:] if messages[0] is system else messages
 *   for m, k in loop: (m is user) != (k even) → raise MSG_ALTERNATE
 *     content = k == 0 and system ? <<SYS>>\n SYS \n<</SYS>>\n\n + m.content : m.content
 *     user: bos [INST]  content.strip()  [/INST]      assistant: ' ' content.strip() ' ' eos
 *     (a system message at an odd k renders nothing)
 *   no generation prompt */
static int render_llama2(const ql_chat_t *c, const ql_chat_msg_t *m, const role_t *r, size_t n,
                         sbuf_t *b, char *err, size_t errlen) {
    size_t first = 0;
    const ql_chat_msg_t *sys = NULL;
    if (r[0] == ROLE_SYSTEM) {
        sys = &m[0];
        first = 1;
    }
    for (size_t i = first; i < n; i++) {
        size_t k = i - first;
        if ((r[i] == ROLE_USER) != (k % 2 == 0)) return role_error(c, MSG_ALTERNATE, i, m[i].role, err, errlen);
        if (r[i] == ROLE_SYSTEM) continue;
        if (r[i] == ROLE_USER) {
            put_s(b, c->bos);
            put_s(b, "[INST] ");
        } else {
            put_s(b, " ");
        }
        size_t from = b->len;
        if (k == 0 && sys) {
            put_s(b, "<<SYS>>\n");
            put_content(b, sys);
            put_s(b, "\n<</SYS>>\n\n");
        }
        put_content(b, &m[i]);
        strip_since(b, from);
        if (r[i] == ROLE_USER) {
            put_s(b, " [/INST]");
        } else {
            put_s(b, " ");
            put_s(b, c->eos);
        }
    }
    return 0;
}

/* Mistral / Mixtral Instruct v0.1-v0.2:
 *   bos; for m, i: (m is user) != (i even) → raise MSG_ALTERNATE
 *     user: [INST]  content  [/INST]     assistant: content eos     else raise MSG_ONLY_USER_ASSISTANT
 *   no generation prompt */
static int render_mistral(const ql_chat_t *c, const ql_chat_msg_t *m, const role_t *r, size_t n,
                          sbuf_t *b, char *err, size_t errlen) {
    put_s(b, c->bos);
    for (size_t i = 0; i < n; i++) {
        if ((r[i] == ROLE_USER) != (i % 2 == 0)) return role_error(c, MSG_ALTERNATE, i, m[i].role, err, errlen);
        if (r[i] == ROLE_USER) {
            put_s(b, "[INST] ");
            put_content(b, &m[i]);
            put_s(b, " [/INST]");
        } else if (r[i] == ROLE_ASSISTANT) {
            put_content(b, &m[i]);
            put_s(b, c->eos);
        } else {
            return role_error(c, MSG_ONLY_USER_ASSISTANT, i, m[i].role, err, errlen);
        }
    }
    return 0;
}

int ql_chat_render(const ql_chat_t *c, const ql_chat_msg_t *msgs, size_t n_msgs,
                   int add_generation_prompt, char **out, size_t *out_len, char *err,
                   size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!c || !out || !out_len || (!msgs && n_msgs)) return QL_EINVAL;
    if (n_msgs == 0) {
        SET_ERR("no messages to render");
        return QL_EINVAL;
    }
    size_t roles_size;
    if (ql_size_mul(n_msgs, sizeof(role_t), &roles_size)) return QL_EOVERFLOW;
    role_t *roles = malloc(roles_size);
    if (!roles) return QL_ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < n_msgs && rc == 0; i++) {
        if (!msgs[i].role) {
            SET_ERR("messages[%zu] has no role", i);
            rc = QL_EINVAL;
        } else if (role_of(msgs[i].role, &roles[i]) != 0) {
            SET_ERR("messages[%zu] has role '%s': quill's chat templates know system, user and "
                    "assistant",
                    i, msgs[i].role);
            rc = QL_EINVAL;
        } else if (!msgs[i].content && msgs[i].content_len) {
            SET_ERR("messages[%zu] has no content", i);
            rc = QL_EINVAL;
        }
    }
    sbuf_t b = {0};
    if (rc == 0) {
        switch (c->format) {
        case QL_CHAT_FORMAT_CHATML: render_chatml(c, msgs, roles, n_msgs, add_generation_prompt, &b); break;
        case QL_CHAT_FORMAT_LLAMA3: render_llama3(c, msgs, n_msgs, add_generation_prompt, &b); break;
        case QL_CHAT_FORMAT_LLAMA2: rc = render_llama2(c, msgs, roles, n_msgs, &b, err, errlen); break;
        case QL_CHAT_FORMAT_MISTRAL: rc = render_mistral(c, msgs, roles, n_msgs, &b, err, errlen); break;
        default: rc = QL_EINTERNAL; break;
        }
    }
    free(roles);
    if (rc == 0) rc = b.rc;
    if (rc == 0 && !b.p) { /* an empty rendering (Llama 2, a lone system message) is still a string */
        put(&b, "", 0);
        rc = b.rc;
    }
    if (rc != 0) {
        if (rc == QL_ENOMEM || rc == QL_EOVERFLOW) SET_ERR("rendering the chat template: %s", ql_strerror(rc));
        free(b.p);
        return rc;
    }
    *out = b.p;
    *out_len = b.len;
    return 0;
}
