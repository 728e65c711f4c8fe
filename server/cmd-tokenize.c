/*
 * server/cmd-tokenize.c — `quill tokenize --model M [--chat] [--verbose] [--] TEXT...`:
 * prints the token ids the model's tokenizer (model/tokenizer.h) makes of TEXT, on one line,
 * space-separated; with --verbose one line per token, the id and its piece quoted and escaped.
 *
 * Several TEXT arguments are joined with single spaces. Plain text is tokenized as a completion
 * prompt is: BOS/EOS where the vocabulary asks for them, text that spells a control token
 * ("<|im_start|>") kept as plain text. --chat wraps TEXT as one user message in the model's
 * chat template (model/chat.h, --chat-template overrides the choice) with the generation
 * prompt, and tokenizes the result with control tokens parsed and no BOS added (the template
 * writes BOS itself where the model wants it).
 *
 * Exit codes (server/cmd.h): 0; 1 when the model cannot be read or its tokenizer or chat
 * template is not usable (one line from the reader); 2 for a missing --model or TEXT or an
 * unknown --chat-template name.
 */
#define QL_LOG_MODULE "tokenize"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/chat.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "server/cmd.h"

#define CMD "tokenize"

#define fail_line(code, ...) ql_cmd_fail((code), CMD, __VA_ARGS__)

/* The TEXT arguments joined with single spaces (malloc'd, NUL-terminated), or NULL. */
static char *join_args(char *const *args, int n, size_t *len) {
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (ql_size_add(total, strlen(args[i]) + (i > 0), &total)) return NULL;
    }
    char *s = malloc(total + 1);
    if (!s) return NULL;
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0) s[o++] = ' ';
        size_t l = strlen(args[i]);
        memcpy(s + o, args[i], l);
        o += l;
    }
    s[o] = '\0';
    *len = o;
    return s;
}

/* Length of the well-formed UTF-8 sequence at s[0..n) (RFC 3629: no overlongs, surrogates
 * or values above U+10FFFF), or 0. */
static size_t utf8_valid_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else return 0;
    if (len > n || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return len;
}

/* Prints a piece between double quotes: well-formed UTF-8 as is, \" \\ \n \t \r escaped,
 * other control bytes and bytes that are not part of a whole character (a byte token, half
 * a character) as \xNN. */
static void print_quoted(FILE *f, const char *bytes, size_t n) {
    const unsigned char *s = (const unsigned char *)bytes;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c >= 0x80) {
            size_t l = utf8_valid_len(s + i, n - i);
            if (l) {
                fwrite(s + i, 1, l, f);
                i += l;
            } else {
                fprintf(f, "\\x%02x", c);
                i++;
            }
            continue;
        }
        switch (c) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\t': fputs("\\t", f); break;
        case '\r': fputs("\\r", f); break;
        default:
            if (c < 0x20 || c == 0x7f) fprintf(f, "\\x%02x", c);
            else fputc((int)c, f);
            break;
        }
        i++;
    }
    fputc('"', f);
}

/* Renders `text` as one user message with the generation prompt. On error prints the line
 * and returns the exit code. */
static int render_chat(const ql_config_t *cfg, const ql_gguf_t *g, const ql_tok_t *tok,
                       const char *text, size_t len, char **out, size_t *out_len) {
    ql_gguf_str_t t = {NULL, 0};
    int rc = ql_gguf_get_str(g, "tokenizer.chat_template", &t);
    if (rc != 0 && rc != QL_ENOENT)
        return fail_line(QL_EXIT_FAIL, "%s: tokenizer.chat_template is not a string", cfg->model);
    int32_t bos = ql_tok_bos(tok), eos = ql_tok_eos(tok);
    ql_chat_params_t p = {
        .name = cfg->chat_template,
        .tmpl = t.ptr,
        .tmpl_len = (size_t)t.len,
        .bos_token = bos >= 0 ? ql_tok_text(tok, bos, NULL) : NULL,
        .eos_token = eos >= 0 ? ql_tok_text(tok, eos, NULL) : NULL,
    };
    ql_chat_t *chat = NULL;
    char err[512];
    rc = ql_chat_init(&p, &chat, err, sizeof err);
    if (rc != 0) return fail_line(rc == QL_EINVAL ? QL_EXIT_USAGE : QL_EXIT_FAIL, "%s", err);
    ql_chat_msg_t msg = {"user", text, len};
    rc = ql_chat_render(chat, &msg, 1, 1, out, out_len, err, sizeof err);
    ql_chat_free(chat);
    if (rc != 0) return fail_line(QL_EXIT_FAIL, "%s", err[0] ? err : ql_strerror(rc));
    return QL_EXIT_OK;
}

int ql_cmd_tokenize(const ql_config_t *cfg) {
    if (!cfg->model || !cfg->model[0])
        return fail_line(QL_EXIT_USAGE, "--model is required (a GGUF file; see quill " CMD " --help)");
    if (cfg->n_args < 1)
        return fail_line(QL_EXIT_USAGE, "no TEXT to tokenize (usage: quill " CMD " --model PATH [--chat] "
                                        "[--verbose] [--] TEXT)");
    int code = QL_EXIT_FAIL;
    ql_gguf_t *g = NULL;
    ql_tok_t *tok = NULL;
    char *text = NULL, *prompt = NULL;
    int32_t *ids = NULL;
    char err[512];
    size_t text_len = 0, prompt_len = 0;

    text = join_args(cfg->args, cfg->n_args, &text_len);
    if (!text) {
        code = fail_line(QL_EXIT_FAIL, "%s", ql_strerror(QL_ENOMEM));
        goto done;
    }
    int rc = ql_gguf_open(cfg->model, &g, err, sizeof err);
    if (rc != 0) {
        code = fail_line(QL_EXIT_FAIL, "%s", err[0] ? err : ql_strerror(rc));
        goto done;
    }
    rc = ql_tok_init_from_gguf(g, &tok, err, sizeof err);
    if (rc != 0) {
        code = fail_line(QL_EXIT_FAIL, "%s: %s", cfg->model, err[0] ? err : ql_strerror(rc));
        goto done;
    }

    uint32_t flags = QL_TOK_ADD_SPECIAL;
    const char *input = text;
    size_t input_len = text_len;
    if (cfg->chat) {
        code = render_chat(cfg, g, tok, text, text_len, &prompt, &prompt_len);
        if (code != QL_EXIT_OK) goto done;
        code = QL_EXIT_FAIL;
        input = prompt;
        input_len = prompt_len;
        flags = QL_TOK_PARSE_SPECIAL;
    }

    /* First pass sizes the buffer, second fills it. */
    size_t n_ids = 0;
    rc = ql_tok_encode(tok, input, input_len, flags, NULL, 0, &n_ids);
    if (rc == QL_ENOSPC || (rc == 0 && n_ids > 0)) {
        ids = malloc(n_ids * sizeof *ids);
        if (!ids) {
            code = fail_line(QL_EXIT_FAIL, "%s", ql_strerror(QL_ENOMEM));
            goto done;
        }
        rc = ql_tok_encode(tok, input, input_len, flags, ids, n_ids, &n_ids);
    }
    if (rc != 0) {
        code = fail_line(QL_EXIT_FAIL, "tokenizing: %s", ql_strerror(rc));
        goto done;
    }

    for (size_t i = 0; i < n_ids; i++) {
        if (cfg->verbose) {
            const char *piece = "";
            size_t piece_len = 0;
            ql_tok_piece(tok, ids[i], QL_TOK_RENDER_SPECIAL, &piece, &piece_len);
            printf("%6d ", (int)ids[i]);
            print_quoted(stdout, piece, piece_len);
            putchar('\n');
        } else {
            printf(i ? " %d" : "%d", (int)ids[i]);
        }
    }
    if (!cfg->verbose) putchar('\n');
    code = fflush(stdout) == 0 ? QL_EXIT_OK : fail_line(QL_EXIT_FAIL, "writing the output failed");

done:
    free(ids);
    free(prompt);
    free(text);
    ql_tok_free(tok);
    ql_gguf_free(g);
    return code;
}
