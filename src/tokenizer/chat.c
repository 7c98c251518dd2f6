/* Chat templates: OpenAI-style messages -> one prompt string (serving) or its pieces, the assistant's marked
 * (fine-tuning data), and the string that ends an assistant turn. */
#include <string.h>

#include "loom/chat.h"

static const char *const template_names[] = {"plain", "chatml", "llama3", NULL};

int loom_chat_template_known(const char *name) {
    for (int i = 0; template_names[i]; i++)
        if (!strcmp(name, template_names[i])) return 1;
    return 0;
}

/* message content: a string, or OpenAI's list of parts of which the "text" ones count */
static int append_content(loom_strbuf *sb, const loom_json *content) {
    if (content && content->type == LOOM_JSON_STRING) {
        loom_strbuf_append(sb, content->string, strlen(content->string));
        return 1;
    }
    if (!content || content->type != LOOM_JSON_ARRAY) return 0;
    for (const loom_json *p = content->child; p; p = p->next) {
        const loom_json *type = loom_json_get(p, "type"), *text = loom_json_get(p, "text");
        if (!type || type->type != LOOM_JSON_STRING || strcmp(type->string, "text") || !text ||
            text->type != LOOM_JSON_STRING)
            return 0;
        loom_strbuf_append(sb, text->string, strlen(text->string));
    }
    return 1;
}

/* the pieces of every message, and with `reply` the header that opens the assistant's reply */
static const char *pieces(const char *tmpl, const loom_json *messages, int reply, loom_chat_piece_fn piece, void *ctx) {
    static const char *const roles[] = {"system", "developer", "user", "assistant", "tool", NULL};
    if (!messages || messages->type != LOOM_JSON_ARRAY || !messages->child) return "'messages' must be a non-empty array";
    const int chatml = !strcmp(tmpl, "chatml"), llama3 = !strcmp(tmpl, "llama3");
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    const char *err = NULL;
#define PIECE(assistant)                                                              \
    do {                                                                              \
        if (sb.failed || piece(ctx, sb.buf ? sb.buf : "", sb.len, assistant)) {      \
            err = "out of memory";                                                    \
            goto done;                                                                \
        }                                                                             \
        sb.len = 0;                                                                   \
    } while (0)
    if (llama3) {
        loom_strbuf_printf(&sb, "<|begin_of_text|>");
        PIECE(0);
    }
    for (const loom_json *msg = messages->child; msg; msg = msg->next) {
        const loom_json *role = loom_json_get(msg, "role");
        err = "each message must be an object with a string 'role'";
        if (msg->type != LOOM_JSON_OBJECT || !role || role->type != LOOM_JSON_STRING) goto done;
        int known = 0;
        for (int i = 0; roles[i]; i++) known |= !strcmp(role->string, roles[i]);
        err = "a message's 'role' must be system, developer, user, assistant or tool";
        if (!known) goto done;
        err = NULL;
        const int assistant = !strcmp(role->string, "assistant");
        if (chatml) loom_strbuf_printf(&sb, "<|im_start|>%s\n", role->string);
        else if (llama3) loom_strbuf_printf(&sb, "<|start_header_id|>%s<|end_header_id|>\n\n", role->string);
        else loom_strbuf_printf(&sb, "%c%s:", role->string[0] - 32, role->string + 1); /* "User:" */
        PIECE(0);
        if (!chatml && !llama3) loom_strbuf_printf(&sb, " "); /* plain: the reply prompt ends "Assistant:", so the
                                                                 space is the reply's first character */
        err = "a message's 'content' must be a string or a list of text parts";
        if (!append_content(&sb, loom_json_get(msg, "content"))) goto done;
        err = NULL;
        PIECE(assistant);
        loom_strbuf_printf(&sb, "%s", chatml ? "<|im_end|>\n" : llama3 ? "<|eot_id|>" : "\n");
        PIECE(assistant);
    }
    if (reply) {
        if (chatml) loom_strbuf_printf(&sb, "<|im_start|>assistant\n");
        else if (llama3) loom_strbuf_printf(&sb, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        else loom_strbuf_printf(&sb, "Assistant:");
        PIECE(0);
    }
#undef PIECE
done:
    loom_strbuf_free(&sb);
    return err;
}

static int append_piece(void *ctx, const char *text, size_t len, int assistant) {
    (void)assistant;
    loom_strbuf *out = ctx;
    loom_strbuf_append(out, text, len);
    return out->failed;
}

const char *loom_chat_render(const char *tmpl, const loom_json *messages, loom_strbuf *out, const char **stop) {
    const char *err = pieces(tmpl, messages, 1, append_piece, out);
    *stop = !strcmp(tmpl, "chatml") ? "<|im_end|>" : !strcmp(tmpl, "llama3") ? "<|eot_id|>" : "\nUser:";
    return err;
}

const char *loom_chat_pieces(const char *tmpl, const loom_json *messages, loom_chat_piece_fn piece, void *ctx) {
    return pieces(tmpl, messages, 0, piece, ctx);
}
