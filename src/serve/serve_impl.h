/* Inside src/serve: the chat templates the server and the data preparation share. */
#ifndef LOOM_SERVE_IMPL_H
#define LOOM_SERVE_IMPL_H
#include "loom/json.h"

/* 1 for a template loom has built in: plain, chatml, llama3 */
int loom_chat_template_known(const char *name);
/* Appends the prompt for `messages` (OpenAI's [{role, content}], content a string or text parts) under
 * template `tmpl`, ending where the assistant's reply begins; *stop: the string that ends that reply.
 * Returns NULL, or what is wrong with the messages (for a 400). */
const char *loom_chat_render(const char *tmpl, const loom_json *messages, loom_strbuf *out, const char **stop);
#endif
