/*
 * ovs tokenizer: the CLIP byte-level BPE tokenizer (open_clip's SimpleTokenizer).
 *
 * Usage (C):
 *
 *     ovs_bpe *bpe = NULL;
 *     // merges: the decompressed text of bpe_simple_vocab_16e6.txt.gz
 *     if (ovs_bpe_create(&bpe, merges, merges_len) != OVS_OK) { ... ovs_last_error() ... }
 *     int32_t ids[2 * 77];                                  // (texts, context)
 *     const char *texts[2] = {"a photo of a cat.", "a photo of a dog."};
 *     int64_t lens[2] = {17, 17};
 *     ovs_tokenize_batch(bpe, texts, lens, 2, 77, ids);
 *     ovs_bpe_free(bpe);
 *
 * Text given to the tokenizer must already be cleaned the way open_clip cleans it (ftfy-style
 * fixes, HTML unescaping, whitespace folding, lower case): ovs/tokenizer.py does that in
 * Python. Here the cleaned UTF-8 is split by open_clip's pre-tokenisation pattern
 *     <start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * (case-insensitive), each piece is byte-encoded and merged by BPE, and the ids are those of
 * open_clip's encoder (49408 tokens with the standard merges file).
 *
 * Thread safety: an ovs_bpe is read-only after creation apart from its word cache, which is
 * guarded by a mutex, so any number of threads may encode with one ovs_bpe at once.
 */
#ifndef OVS_TOKENIZER_H
#define OVS_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "ovs/ovs.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ovs_bpe ovs_bpe;

/* Build the vocabulary and merge ranks from the text of a CLIP merges file.
 * out        receives the tokenizer (NULL on failure)
 * merges     the file's text, UTF-8: one header line, then "left right" merges, one per line
 *            (lines[1:48895] of text.split("\n"), exactly the lines open_clip uses)
 * len        its length in bytes
 * Token ids as open_clip numbers them: the 256 byte symbols, the same with "</w>", one token
 * per merge line (its fields joined), <start_of_text>, <end_of_text>. Equal tokens take the
 * last of their ids and a repeated pair its last rank, as open_clip's dicts do.
 * OVS_ERR_FORMAT if a used line is not UTF-8 or has a character that is no byte symbol. */
int ovs_bpe_create(ovs_bpe **out, const char *merges, size_t len);
void ovs_bpe_free(ovs_bpe *bpe);

/* Number of token ids (ids are in [0, vocab_size)) and the two special ids: 49408, 49406 and
 * 49407 with the standard file. */
int64_t ovs_bpe_vocab_size(const ovs_bpe *bpe);
int32_t ovs_bpe_sot(const ovs_bpe *bpe);
int32_t ovs_bpe_eot(const ovs_bpe *bpe);

/* Encode cleaned text (no <start_of_text>/<end_of_text> added).
 * text       UTF-8, `len` bytes (need not be NUL-terminated); OVS_ERR_ARG if invalid UTF-8
 * out_ids    receives up to `cap` ids, (cap,)
 * cap        capacity of out_ids; encoding stops once it is full. Every token covers at least
 *            one byte of text, so cap >= len always receives all of them
 * n          receives the number of ids written (<= cap) */
int ovs_bpe_encode(ovs_bpe *bpe, const char *text, size_t len, int32_t *out_ids, int64_t cap,
                   int64_t *n);

/* open_clip's tokenize(): each row is <start_of_text>, the text's ids, <end_of_text>, then
 * zeros; a text with more than context-2 ids keeps its first context-2 and still ends with
 * <end_of_text> (encoding stops there, which gives the same ids as encoding everything).
 * texts      (count,) cleaned UTF-8 strings, lens (count,) their byte lengths
 * context    row length, >= 2
 * out        (count, context) int32 */
int ovs_tokenize_batch(ovs_bpe *bpe, const char *const *texts, const int64_t *lens, int64_t count,
                       int64_t context, int32_t *out);

/* The bytes of token `id` as open_clip's decoder spells them (a word-final token ends with
 * the four bytes "</w>"). *bytes points into the tokenizer; OVS_ERR_ARG for a bad id. */
int ovs_bpe_token_bytes(const ovs_bpe *bpe, int32_t id, const char **bytes, size_t *len);

/* Test hook: words of at least `n` symbols are merged with the heap-based BPE, shorter ones
 * with the plain quadratic loop that mirrors open_clip's code (default 48). n = 0 forces the
 * heap everywhere, INT64_MAX the plain loop everywhere; results never depend on it. */
void ovs_bpe_set_heap_threshold(ovs_bpe *bpe, int64_t n);

#ifdef __cplusplus
}
#endif
#endif /* OVS_TOKENIZER_H */
