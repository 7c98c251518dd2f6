/* A split's tokens back to text (loom_data_write_text, `loom data decode`), with the tokenizer the data
 * names (loom_data_tokenizer: "byte", "gpt2", or the tokenizer file stored in the dataset). */
#include <stdlib.h>
#include <string.h>

#include "loom/data.h"
#include "loom/tokenizer.h"

#define BLOCK 65536

loom_status loom_data_write_text(const loom_data *d, loom_split split, FILE *f) {
    const char *name = loom_data_tokenizer(d);
    LOOM_CHECK(name != NULL, LOOM_ERR_UNSUPPORTED, "%s: no tokenizer is known for this data", loom_data_describe(d));
    loom_tokenizer *tok = NULL;
    LOOM_CALL(loom_tokenizer_load(name, &tok));
    int32_t *ids = malloc(BLOCK * sizeof *ids);
    loom_status st = ids ? LOOM_OK : loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    const int64_t n = loom_data_num_tokens(d, split);
    for (int64_t at = 0; st == LOOM_OK && at < n; at += BLOCK) {
        int64_t k = n - at < BLOCK ? n - at : BLOCK;
        char *text = NULL;
        size_t len = 0;
        st = loom_data_read(d, split, at, k, ids);
        if (st == LOOM_OK) st = loom_tokenizer_decode(tok, ids, k, &text, &len);
        if (st == LOOM_OK && len && fwrite(text, 1, len, f) != len)
            st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot write the decoded text");
        free(text);
    }
    free(ids);
    loom_tokenizer_free(&tok);
    return st;
}
