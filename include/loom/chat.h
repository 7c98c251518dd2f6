/* loom/chat.h: chat templates (plain, chatml, llama3), shared by the server (a conversation's prompt) and the
 * data preparation (a conversation to fine-tune on, its assistant turns taking the loss).
 *
 *   const char *stop, *err = loom_chat_render("chatml", messages, &prompt, &stop);   // NULL or what is wrong
 *
 * A template renders a conversation as pieces in order: each message's header ("<|im_start|>user\n"), its
 * content, its end ("<|im_end|>\n"); a message is the assistant's when its role is "assistant". */
#ifndef LOOM_CHAT_H
#define LOOM_CHAT_H
#include <stddef.h>

#include "loom/json.h"

/* 1 for a template loom has built in: plain, chatml, llama3 */
int loom_chat_template_known(const char *name);
/* Appends the prompt for `messages` (OpenAI's [{role, content}], content a string or text parts) under
 * template `tmpl`, ending where the assistant's reply begins; *stop: the string that ends that reply.
 * Returns NULL, or what is wrong with the messages (for a 400). */
const char *loom_chat_render(const char *tmpl, const loom_json *messages, loom_strbuf *out, const char **stop);
/* The whole conversation's pieces, no reply prompt after it: piece(ctx, text, len, assistant) for each, where
 * assistant says the piece is an assistant message's content or end (what fine-tuning learns to write).
 * Returns NULL, or what is wrong with the messages, or "out of memory" when piece returns nonzero. */
typedef int (*loom_chat_piece_fn)(void *ctx, const char *text, size_t len, int assistant);
const char *loom_chat_pieces(const char *tmpl, const loom_json *messages, loom_chat_piece_fn piece, void *ctx);
#endif
