/* Chat templates: OpenAI-style messages -> one prompt string, and the string that ends an assistant turn. */
#include <string.h>

#include "serve_impl.h"

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

const char *loom_chat_render(const char *tmpl, const loom_json *messages, loom_strbuf *out, const char **stop) {
    static const char *const roles[] = {"system", "developer", "user", "assistant", "tool", NULL};
    if (!messages || messages->type != LOOM_JSON_ARRAY || !messages->child) return "'messages' must be a non-empty array";
    const int chatml = !strcmp(tmpl, "chatml"), llama3 = !strcmp(tmpl, "llama3");
    if (llama3) loom_strbuf_printf(out, "<|begin_of_text|>");
    for (const loom_json *msg = messages->child; msg; msg = msg->next) {
        const loom_json *role = loom_json_get(msg, "role");
        if (msg->type != LOOM_JSON_OBJECT || !role || role->type != LOOM_JSON_STRING)
            return "each message must be an object with a string 'role'";
        int known = 0;
        for (int i = 0; roles[i]; i++) known |= !strcmp(role->string, roles[i]);
        if (!known) return "a message's 'role' must be system, developer, user, assistant or tool";
        if (chatml) loom_strbuf_printf(out, "<|im_start|>%s\n", role->string);
        else if (llama3) loom_strbuf_printf(out, "<|start_header_id|>%s<|end_header_id|>\n\n", role->string);
        else loom_strbuf_printf(out, "%c%s: ", role->string[0] - 32, role->string + 1); /* "User: " */
        if (!append_content(out, loom_json_get(msg, "content")))
            return "a message's 'content' must be a string or a list of text parts";
        loom_strbuf_printf(out, "%s", chatml ? "<|im_end|>\n" : llama3 ? "<|eot_id|>" : "\n");
    }
    if (chatml) loom_strbuf_printf(out, "<|im_start|>assistant\n");
    else if (llama3) loom_strbuf_printf(out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    else loom_strbuf_printf(out, "Assistant:");
    *stop = chatml ? "<|im_end|>" : llama3 ? "<|eot_id|>" : "\nUser:";
    return out->failed ? "out of memory" : NULL;
}
