/* The CLIP byte-level BPE tokenizer: vocabulary, pre-tokenisation, merges, batches.
 *
 * Tokens are identified by their raw bytes. open_clip spells tokens with "byte characters"
 * (bytes_to_unicode) and marks a word's last symbol with "</w>"; since that map is a bijection
 * and "</w>" is itself four byte characters, a token string corresponds one-to-one to the raw
 * bytes it decodes to, e.g. "cat</w>" <-> the 7 bytes `cat</w>`. Keying the vocabulary by raw
 * bytes therefore keeps open_clip's identities (including which of two equal strings wins)
 * while letting the word loop work on plain bytes.
 *
 * Sizes: V vocabulary tokens, R merges, n symbols of one word. */
#include "ovs/tokenizer.h"
#include "text/unicode_tables.h"

#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#define MAX_MERGES 48894   /* open_clip keeps lines[1 : 49152 - 256 - 2 + 1] */
#define EOW "</w>"
#define EOW_LEN 4
#define DEFAULT_HEAP_THRESHOLD 48

/* Word cache: fixed capacity, emptied when full; only short words are cached. */
#define CACHE_SLOTS (1u << 14)
#define CACHE_MAX_WORDS (CACHE_SLOTS / 2)
#define CACHE_BYTES (1u << 18)
#define CACHE_IDS (1u << 16)
#define CACHE_MAX_KEY 64

typedef struct {
    uint64_t key;    /* (left id << 32) | right id; PAIR_EMPTY if unused */
    int32_t rank;    /* merge rank: lower merges first */
    int32_t merged;  /* id of the merged token */
} pair_slot;
#define PAIR_EMPTY UINT64_MAX

typedef struct {
    uint64_t hash;     /* hash_bytes(key) | 1; 0 = empty */
    uint32_t key_off;  /* into cache_bytes */
    uint32_t ids_off;  /* into cache_ids */
    uint16_t key_len;
    uint16_t n_ids;
} cache_slot;

enum { CP_OTHER = 0, CP_LETTER = 1, CP_NUMBER = 2, CP_SKIP = 3 };

struct ovs_bpe {
    int64_t vocab_size;         /* V = 512 + R + 2 */
    int32_t sot, eot;
    int32_t byte_id[256];       /* raw byte -> id of its symbol */
    int32_t byte_eow_id[256];   /* raw byte -> id of its word-final symbol (byte + "</w>") */
    char *tok_bytes;            /* (sum of token lengths,) raw bytes of every token */
    int64_t *tok_off;           /* (V + 1,) token i is tok_bytes[tok_off[i] : tok_off[i+1]] */
    pair_slot *pairs;           /* (pair_cap,) open addressing */
    uint64_t pair_mask;         /* pair_cap - 1 */
    int64_t heap_threshold;     /* words with >= this many symbols use the heap merge */
    uint8_t ascii_class[128];   /* CP_* of each ASCII code point */
    pthread_mutex_t cache_lock;
    int cache_lock_ready;
    cache_slot *cache;          /* (CACHE_SLOTS,) */
    char *cache_bytes;          /* (CACHE_BYTES,) keys */
    int32_t *cache_ids;         /* (CACHE_IDS,) ids */
    uint32_t cache_words, cache_bytes_used, cache_ids_used;
};

/* ---------------------------------------------------------------- hashing */
static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;  /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t hash_pair(uint64_t key) { return key * 0x9E3779B97F4A7C15ull; }

static uint64_t pow2_at_least(uint64_t n) {
    uint64_t p = 16;
    while (p < n) p <<= 1;
    return p;
}

/* ---------------------------------------------------------------- byte symbols */
/* open_clip's bytes_to_unicode order: printable Latin-1 bytes first ('!'..'~', 0xA1..0xAC,
 * 0xAE..0xFF), then the remaining bytes ascending; the k-th of them is spelled U+0100 + k. */
static int byte_is_printable(int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static void byte_tables(int32_t byte_pos[256], int32_t char_to_byte[512]) {
    int pos = 0, extra = 0;
    for (int i = 0; i < 512; i++) char_to_byte[i] = -1;
    for (int b = 0; b < 256; b++)
        if (byte_is_printable(b)) {
            byte_pos[b] = pos++;
            char_to_byte[b] = b;
        }
    for (int b = 0; b < 256; b++)
        if (!byte_is_printable(b)) {
            byte_pos[b] = pos++;
            char_to_byte[256 + extra++] = b;
        }
}

/* ---------------------------------------------------------------- UTF-8 */
/* Length of the valid UTF-8 sequence at s[0..n), or 0 if invalid (overlong, surrogate,
 * beyond U+10FFFF, truncated). */
static int utf8_valid_len(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0;   /* overlong */
        if (c == 0xED && s[1] >= 0xA0) return 0;  /* surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0;   /* overlong */
        if (c == 0xF4 && s[1] >= 0x90) return 0;  /* > U+10FFFF */
        return 4;
    }
    return 0;
}

static int utf8_validate(const char *text, size_t len, size_t *bad_at) {
    const uint8_t *s = (const uint8_t *)text;
    size_t i = 0;
    while (i < len) {
        if (s[i] < 0x80) { i++; continue; }
        int w = utf8_valid_len(s + i, len - i);
        if (!w) { *bad_at = i; return 0; }
        i += (size_t)w;
    }
    return 1;
}

/* Decode the code point at s[0..n) of already validated UTF-8; *w receives its length. */
static uint32_t utf8_decode(const uint8_t *s, size_t n, int *w) {
    uint8_t c = s[0];
    if (c < 0x80 || n < 2) { *w = 1; return c; }
    if (c < 0xE0) { *w = 2; return ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F); }
    if (c < 0xF0 || n < 4) {
        *w = n < 3 ? (int)n : 3;
        return ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (n >= 3 ? (s[2] & 0x3F) : 0);
    }
    *w = 4;
    return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
           ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

/* ---------------------------------------------------------------- character classes */
static int in_ranges(const ovs_cp_range *r, size_t count, uint32_t cp) {
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid].lo) hi = mid;
        else if (cp > r[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

static int cp_class_slow(uint32_t cp) {
    if (in_ranges(ovs_letter_ranges, COUNT_OF(ovs_letter_ranges), cp)) return CP_LETTER;
    if (in_ranges(ovs_number_ranges, COUNT_OF(ovs_number_ranges), cp)) return CP_NUMBER;
    if (in_ranges(ovs_skip_ranges, COUNT_OF(ovs_skip_ranges), cp)) return CP_SKIP;
    return CP_OTHER;
}

static int cp_class(const ovs_bpe *bpe, uint32_t cp) {
    return cp < 128 ? bpe->ascii_class[cp] : cp_class_slow(cp);
}

/* Does code point `cp` match the pattern character `pc` under IGNORECASE? */
static int ci_match(uint32_t cp, char pc) {
    if (cp == (uint8_t)pc) return 1;
    if (pc < 'a' || pc > 'z') return 0;
    if (cp == (uint32_t)(pc - 'a' + 'A')) return 1;
    for (size_t i = 0; i < COUNT_OF(ovs_case_extra); i++)
        if (ovs_case_extra[i].letter == pc && ovs_case_extra[i].cp == cp) return 1;
    return 0;
}

/* Bytes of s[0..n) matched by the literal `pat` (ASCII) case-insensitively, or 0. */
static size_t match_literal(const uint8_t *s, size_t n, const char *pat) {
    size_t i = 0;
    for (const char *p = pat; *p; p++) {
        if (i >= n) return 0;
        int w;
        uint32_t cp = utf8_decode(s + i, n - i, &w);
        if (!ci_match(cp, *p)) return 0;
        i += (size_t)w;
    }
    return i;
}

/* The literal alternatives, in the pattern's order (the first that matches wins). */
static const char *const LITERALS[] = {
    "<start_of_text>", "<end_of_text>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d",
};

/* ---------------------------------------------------------------- creation */
static const pair_slot *pair_find(const ovs_bpe *bpe, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t i = hash_pair(key) >> 20 & bpe->pair_mask;
    for (;;) {
        const pair_slot *s = &bpe->pairs[i];
        if (s->key == key) return s;
        if (s->key == PAIR_EMPTY) return NULL;
        i = (i + 1) & bpe->pair_mask;
    }
}

/* Temporary token-bytes -> id table used while building (last insertion of a key wins, as
 * in open_clip's dict(zip(vocab, range(len(vocab))))). */
typedef struct {
    int32_t *slot;  /* (cap,) id + 1, 0 = empty */
    uint64_t mask;
} token_index;

static int32_t *token_index_slot(token_index *ix, const ovs_bpe *bpe, const char *s, size_t n) {
    uint64_t i = hash_bytes(s, n) & ix->mask;
    for (;;) {
        int32_t v = ix->slot[i];
        if (v == 0) return &ix->slot[i];
        int64_t id = v - 1;
        size_t tn = (size_t)(bpe->tok_off[id + 1] - bpe->tok_off[id]);
        if (tn == n && memcmp(bpe->tok_bytes + bpe->tok_off[id], s, n) == 0) return &ix->slot[i];
        i = (i + 1) & ix->mask;
    }
}

/* Decode one merges-file symbol (byte characters, UTF-8) into raw bytes at `dst`. */
static int symbol_to_bytes(const char *s, size_t n, const int32_t char_to_byte[512], char *dst,
                           size_t *out_len, int64_t line) {
    size_t i = 0, k = 0;
    while (i < n) {
        int w = utf8_valid_len((const uint8_t *)s + i, n - i);
        if (!w) return ovs_set_error(OVS_ERR_FORMAT, "merges line %lld: invalid UTF-8", (long long)line);
        int wd;
        uint32_t cp = utf8_decode((const uint8_t *)s + i, n - i, &wd);
        if (cp >= 512 || char_to_byte[cp] < 0)
            return ovs_set_error(OVS_ERR_FORMAT,
                                 "merges line %lld: U+%04X is not one of the 256 byte symbols",
                                 (long long)line, (unsigned)cp);
        dst[k++] = (char)char_to_byte[cp];
        i += (size_t)w;
    }
    *out_len = k;
    return OVS_OK;
}

typedef struct {
    size_t off, len; /* the merge's token in tok_bytes: its fields' bytes concatenated */
    size_t a_len;    /* bytes of the first field (the second follows) */
    int pairable;    /* exactly two fields, so a rank for the pair (first, second) */
} merge_span;

/* open_clip splits a merges line with str.split(): runs of whitespace separate fields. The byte
 * symbols are never whitespace, so ASCII whitespace is all that can separate them. */
static int is_field_space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' ||
           (c >= 0x1C && c <= 0x1F);
}

/* Decode the fields of line [pos, end) into raw bytes at dst; fills *span (off set by caller). */
static int parse_merge_line(const char *merges, size_t pos, size_t end, const int32_t char_to_byte[512],
                            char *dst, merge_span *span, int64_t line) {
    size_t k = 0;
    int fields = 0;
    size_t i = pos;
    span->a_len = 0;
    while (i < end) {
        while (i < end && is_field_space(merges[i])) i++;
        if (i == end) break;
        size_t j = i;
        while (j < end && !is_field_space(merges[j])) j++;
        size_t n = 0;
        int st = symbol_to_bytes(merges + i, j - i, char_to_byte, dst + k, &n, line);
        if (st) return st;
        if (fields == 0) span->a_len = n;
        k += n;
        fields++;
        i = j;
    }
    span->len = k;
    span->pairable = fields == 2;
    return OVS_OK;
}

int ovs_bpe_create(ovs_bpe **out, const char *merges, size_t len) {
    if (!out) return ovs_set_error(OVS_ERR_ARG, "ovs_bpe_create: out is NULL");
    *out = NULL;
    if (!merges && len) return ovs_set_error(OVS_ERR_ARG, "ovs_bpe_create: merges is NULL");
    int st = OVS_OK;
    int32_t char_to_byte[512];
    token_index ix = {NULL, 0};
    merge_span *spans = NULL;
    ovs_bpe *bpe = ovs_calloc(1, sizeof *bpe);
    if (!bpe) return OVS_ERR_NOMEM;
    byte_tables(bpe->byte_id, char_to_byte);
    bpe->heap_threshold = DEFAULT_HEAP_THRESHOLD;
    for (uint32_t c = 0; c < 128; c++) bpe->ascii_class[c] = (uint8_t)cp_class_slow(c);

    /* The merges are lines[1 : 1 + MAX_MERGES] of text.split("\n"), as in open_clip (so a
     * final newline of a short file yields one empty merge, as there). */
    const char *nl = len ? memchr(merges, '\n', len) : NULL;
    size_t first = nl ? (size_t)(nl - merges) + 1 : len;
    int64_t n_merges = 0;
    if (nl) {
        for (size_t pos = first; n_merges < MAX_MERGES;) {
            const char *e = pos < len ? memchr(merges + pos, '\n', len - pos) : NULL;
            n_merges++;
            if (!e) break;
            pos = (size_t)(e - merges) + 1;
        }
    }

    /* Token bytes: 256 bytes, 256 bytes + "</w>", each merge, then the two special tokens.
     * A merge's raw bytes are at most its text's bytes (each symbol character is >= 1 byte of
     * UTF-8 and becomes one raw byte), so the text length bounds the merge part. */
    bpe->vocab_size = 512 + n_merges + 2;
    bpe->sot = (int32_t)(512 + n_merges);
    bpe->eot = bpe->sot + 1;
    size_t cap_bytes = 256 * (2 + EOW_LEN) + len + 15 + 13;
    bpe->tok_bytes = ovs_malloc(cap_bytes);
    bpe->tok_off = ovs_malloc((size_t)(bpe->vocab_size + 1) * sizeof(int64_t));
    spans = ovs_malloc((size_t)(n_merges > 0 ? n_merges : 1) * sizeof *spans);
    if (!bpe->tok_bytes || !bpe->tok_off || !spans) { st = OVS_ERR_NOMEM; goto error; }
    int32_t byte_at[256];
    for (int b = 0; b < 256; b++) byte_at[bpe->byte_id[b]] = b;
    size_t used = 0;
    int64_t id = 0;
    for (int p = 0; p < 256; p++, id++) {
        bpe->tok_off[id] = (int64_t)used;
        bpe->tok_bytes[used++] = (char)byte_at[p];
    }
    for (int p = 0; p < 256; p++, id++) {
        bpe->tok_off[id] = (int64_t)used;
        bpe->tok_bytes[used++] = (char)byte_at[p];
        memcpy(bpe->tok_bytes + used, EOW, EOW_LEN);
        used += EOW_LEN;
    }
    size_t pos = first;
    for (int64_t r = 0; r < n_merges; r++, id++) {
        size_t end = pos;
        while (end < len && merges[end] != '\n') end++;
        bpe->tok_off[id] = (int64_t)used;
        spans[r].off = used;
        st = parse_merge_line(merges, pos, end, char_to_byte, bpe->tok_bytes + used, &spans[r], r + 2);
        if (st) goto error;
        used += spans[r].len;
        pos = end + 1;
    }
    bpe->tok_off[id] = (int64_t)used;
    memcpy(bpe->tok_bytes + used, "<start_of_text>", 15);
    used += 15;
    bpe->tok_off[++id] = (int64_t)used;
    memcpy(bpe->tok_bytes + used, "<end_of_text>", 13);
    used += 13;
    bpe->tok_off[++id] = (int64_t)used;

    /* Token index (bytes -> id), later ids overwriting earlier equal tokens. */
    uint64_t ix_cap = pow2_at_least((uint64_t)bpe->vocab_size * 2);
    ix.slot = ovs_calloc(ix_cap, sizeof(int32_t));
    if (!ix.slot) { st = OVS_ERR_NOMEM; goto error; }
    ix.mask = ix_cap - 1;
    for (int64_t t = 0; t < bpe->vocab_size; t++) {
        size_t off = (size_t)bpe->tok_off[t], n = (size_t)(bpe->tok_off[t + 1] - bpe->tok_off[t]);
        *token_index_slot(&ix, bpe, bpe->tok_bytes + off, n) = (int32_t)(t + 1);
    }
    /* A token is known by its last id (open_clip's encoder is a dict), also the byte symbols a
     * word starts from, in case a merge spells the same bytes again. */
    for (int b = 0; b < 256; b++) {
        char sym[1 + EOW_LEN] = {(char)b, '<', '/', 'w', '>'};
        bpe->byte_id[b] = *token_index_slot(&ix, bpe, sym, 1) - 1;
        bpe->byte_eow_id[b] = *token_index_slot(&ix, bpe, sym, 1 + EOW_LEN) - 1;
    }
    bpe->sot = *token_index_slot(&ix, bpe, "<start_of_text>", 15) - 1;
    bpe->eot = *token_index_slot(&ix, bpe, "<end_of_text>", 13) - 1;

    /* Merge ranks keyed by (left id, right id); a repeated pair keeps its last rank, as
     * dict(zip(merges, range(len(merges)))) does. */
    uint64_t pair_cap = pow2_at_least((uint64_t)n_merges * 2);
    bpe->pairs = ovs_malloc(pair_cap * sizeof(pair_slot));
    if (!bpe->pairs) { st = OVS_ERR_NOMEM; goto error; }
    for (uint64_t i = 0; i < pair_cap; i++) bpe->pairs[i].key = PAIR_EMPTY;
    bpe->pair_mask = pair_cap - 1;
    for (int64_t r = 0; r < n_merges; r++) {
        if (!spans[r].pairable) continue;  /* a key that is not a pair never matches a word */
        const char *tok = bpe->tok_bytes + spans[r].off;
        int32_t va = *token_index_slot(&ix, bpe, tok, spans[r].a_len);
        int32_t vb = *token_index_slot(&ix, bpe, tok + spans[r].a_len, spans[r].len - spans[r].a_len);
        int32_t vm = *token_index_slot(&ix, bpe, tok, spans[r].len);
        /* A symbol that is no token never occurs in a word, so neither does the pair. */
        if (!va || !vb) continue;
        uint64_t key = ((uint64_t)(uint32_t)(va - 1) << 32) | (uint32_t)(vb - 1);
        uint64_t i = hash_pair(key) >> 20 & bpe->pair_mask;
        while (bpe->pairs[i].key != PAIR_EMPTY && bpe->pairs[i].key != key)
            i = (i + 1) & bpe->pair_mask;
        bpe->pairs[i].key = key;
        bpe->pairs[i].rank = (int32_t)r;
        bpe->pairs[i].merged = vm - 1;  /* always present: the merge's own token */
    }

    bpe->cache = ovs_calloc(CACHE_SLOTS, sizeof(cache_slot));
    bpe->cache_bytes = ovs_malloc(CACHE_BYTES);
    bpe->cache_ids = ovs_malloc(CACHE_IDS * sizeof(int32_t));
    if (!bpe->cache || !bpe->cache_bytes || !bpe->cache_ids) { st = OVS_ERR_NOMEM; goto error; }
    if (pthread_mutex_init(&bpe->cache_lock, NULL) != 0) {
        st = ovs_set_error(OVS_ERR_NOMEM, "could not create the tokenizer cache mutex");
        goto error;
    }
    bpe->cache_lock_ready = 1;

    ovs_free(ix.slot);
    ovs_free(spans);
    *out = bpe;
    return OVS_OK;
error:
    ovs_free(ix.slot);
    ovs_free(spans);
    ovs_bpe_free(bpe);
    return st;
}

void ovs_bpe_free(ovs_bpe *bpe) {
    if (!bpe) return;
    if (bpe->cache_lock_ready) pthread_mutex_destroy(&bpe->cache_lock);
    OVS_FREE_ALL(bpe->tok_bytes, bpe->tok_off, bpe->pairs, bpe->cache, bpe->cache_bytes,
                 bpe->cache_ids, bpe);
}

int64_t ovs_bpe_vocab_size(const ovs_bpe *bpe) { return bpe->vocab_size; }
int32_t ovs_bpe_sot(const ovs_bpe *bpe) { return bpe->sot; }
int32_t ovs_bpe_eot(const ovs_bpe *bpe) { return bpe->eot; }

int ovs_bpe_token_bytes(const ovs_bpe *bpe, int32_t id, const char **bytes, size_t *len) {
    if (id < 0 || id >= bpe->vocab_size)
        return ovs_set_error(OVS_ERR_ARG, "token id %d is outside the vocabulary [0, %lld)", id,
                             (long long)bpe->vocab_size);
    *bytes = bpe->tok_bytes + bpe->tok_off[id];
    *len = (size_t)(bpe->tok_off[id + 1] - bpe->tok_off[id]);
    return OVS_OK;
}

/* ---------------------------------------------------------------- word cache */
static void cache_clear_locked(ovs_bpe *bpe) {
    memset(bpe->cache, 0, CACHE_SLOTS * sizeof(cache_slot));
    bpe->cache_words = bpe->cache_bytes_used = bpe->cache_ids_used = 0;
}

void ovs_bpe_set_heap_threshold(ovs_bpe *bpe, int64_t n) {
    pthread_mutex_lock(&bpe->cache_lock);
    __atomic_store_n(&bpe->heap_threshold, n < 0 ? 0 : n, __ATOMIC_RELAXED);
    cache_clear_locked(bpe);  /* so that tests of either merge loop do not read cached words */
    pthread_mutex_unlock(&bpe->cache_lock);
}

/* Copy the cached ids of word w[0..n) (at most `room` of them) to out; returns the number of
 * ids the word has, or -1 if it is not cached. */
static int64_t cache_get(ovs_bpe *bpe, const char *w, size_t n, uint64_t h, int32_t *out, int64_t room) {
    int64_t found = -1;
    pthread_mutex_lock(&bpe->cache_lock);
    uint32_t i = (uint32_t)(h >> 40) & (CACHE_SLOTS - 1);
    for (;;) {
        const cache_slot *s = &bpe->cache[i];
        if (s->hash == 0) break;
        if (s->hash == h && s->key_len == n && memcmp(bpe->cache_bytes + s->key_off, w, n) == 0) {
            found = s->n_ids;
            int64_t k = found < room ? found : room;
            memcpy(out, bpe->cache_ids + s->ids_off, (size_t)k * sizeof(int32_t));
            break;
        }
        i = (i + 1) & (CACHE_SLOTS - 1);
    }
    pthread_mutex_unlock(&bpe->cache_lock);
    return found;
}

static void cache_put(ovs_bpe *bpe, const char *w, size_t n, uint64_t h, const int32_t *ids, int64_t n_ids) {
    pthread_mutex_lock(&bpe->cache_lock);
    if (bpe->cache_words >= CACHE_MAX_WORDS || bpe->cache_bytes_used + n > CACHE_BYTES ||
        bpe->cache_ids_used + (uint64_t)n_ids > CACHE_IDS)
        cache_clear_locked(bpe);
    uint32_t i = (uint32_t)(h >> 40) & (CACHE_SLOTS - 1);
    for (;;) {
        cache_slot *s = &bpe->cache[i];
        if (s->hash == 0) break;
        if (s->hash == h && s->key_len == n && memcmp(bpe->cache_bytes + s->key_off, w, n) == 0)
            goto done;  /* another thread got there first */
        i = (i + 1) & (CACHE_SLOTS - 1);
    }
    cache_slot *s = &bpe->cache[i];
    s->hash = h;
    s->key_off = bpe->cache_bytes_used;
    s->key_len = (uint16_t)n;
    s->ids_off = bpe->cache_ids_used;
    s->n_ids = (uint16_t)n_ids;
    memcpy(bpe->cache_bytes + s->key_off, w, n);
    memcpy(bpe->cache_ids + s->ids_off, ids, (size_t)n_ids * sizeof(int32_t));
    bpe->cache_bytes_used += (uint32_t)n;
    bpe->cache_ids_used += (uint32_t)n_ids;
    bpe->cache_words++;
done:
    pthread_mutex_unlock(&bpe->cache_lock);
}

/* ---------------------------------------------------------------- merging one word */
typedef struct {
    int32_t rank, pos;  /* heap order: lowest rank, then leftmost */
    int32_t a, b;       /* the pair's ids when pushed; stale if they no longer match */
} heap_entry;

/* Per-call scratch, grown on demand for the longest word seen. */
typedef struct {
    int64_t cap;        /* symbols the arrays hold */
    int32_t *sym;       /* (cap,) symbol ids; -1 = merged away (heap loop) */
    int32_t *tmp;       /* (cap,) naive loop: next word; heap loop: list of merged positions */
    int32_t *prev;      /* (cap,) heap loop: linked list */
    int32_t *next;      /* (cap,) */
    heap_entry *heap;   /* (3 * cap,) every push: n - 1 initial pairs + 2 per merge */
} bpe_scratch;

static void scratch_free(bpe_scratch *s) {
    ovs_free(s->sym);
    ovs_free(s->tmp);
    ovs_free(s->prev);
    ovs_free(s->next);
    ovs_free(s->heap);
    memset(s, 0, sizeof *s);
}

static int scratch_reserve(bpe_scratch *s, int64_t n) {
    if (n <= s->cap) return OVS_OK;
    if (n > INT32_MAX / 4)
        return ovs_set_error(OVS_ERR_OVERFLOW, "a word of %lld bytes is too long to tokenize", (long long)n);
    int64_t cap = s->cap ? s->cap : 64;
    while (cap < n) cap *= 2;
    scratch_free(s);
    s->sym = ovs_malloc((size_t)cap * sizeof(int32_t));
    s->tmp = ovs_malloc((size_t)cap * sizeof(int32_t));
    s->prev = ovs_malloc((size_t)cap * sizeof(int32_t));
    s->next = ovs_malloc((size_t)cap * sizeof(int32_t));
    s->heap = ovs_malloc((size_t)cap * 3 * sizeof(heap_entry));
    if (!s->sym || !s->tmp || !s->prev || !s->next || !s->heap) {
        scratch_free(s);
        return OVS_ERR_NOMEM;
    }
    s->cap = cap;
    return OVS_OK;
}

/* open_clip's loop, literally: find the lowest-ranked adjacent pair, merge every occurrence
 * left to right, repeat. O(n^2) per word, fine for the short words of real text.
 * sym (n,) in/out; returns the new length. */
static int64_t merge_naive(const ovs_bpe *bpe, int32_t *sym, int64_t n, int32_t *tmp) {
    while (n > 1) {
        const pair_slot *best = NULL;
        for (int64_t i = 0; i + 1 < n; i++) {
            const pair_slot *p = pair_find(bpe, sym[i], sym[i + 1]);
            if (p && (!best || p->rank < best->rank)) best = p;
        }
        if (!best) break;
        int32_t a = (int32_t)(best->key >> 32), b = (int32_t)(best->key & 0xFFFFFFFFu);
        int64_t k = 0;
        for (int64_t i = 0; i < n;) {
            if (i + 1 < n && sym[i] == a && sym[i + 1] == b) {
                tmp[k++] = best->merged;
                i += 2;
            } else {
                tmp[k++] = sym[i++];
            }
        }
        memcpy(sym, tmp, (size_t)k * sizeof(int32_t));
        n = k;
    }
    return n;
}

static int heap_less(const heap_entry *x, const heap_entry *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(heap_entry *h, int64_t *size, heap_entry e) {
    int64_t i = (*size)++;
    while (i > 0) {
        int64_t parent = (i - 1) / 2;
        if (!heap_less(&e, &h[parent])) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = e;
}

static heap_entry heap_pop(heap_entry *h, int64_t *size) {
    heap_entry top = h[0], last = h[--*size];
    int64_t i = 0, n = *size;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_less(&h[c + 1], &h[c])) c++;
        if (!heap_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (n > 0) h[i] = last;
    return top;
}

static void push_pair(const ovs_bpe *bpe, bpe_scratch *s, int64_t *size, int32_t i) {
    int32_t j = s->next[i];
    if (j < 0) return;
    const pair_slot *p = pair_find(bpe, s->sym[i], s->sym[j]);
    if (p) heap_push(s->heap, size, (heap_entry){p->rank, i, s->sym[i], s->sym[j]});
}

/* The same result as merge_naive in O(n log n): a heap of candidate pairs ordered by (rank,
 * position). All entries of the lowest rank are taken as one batch and applied left to right,
 * skipping those whose symbols changed earlier in the batch -- exactly open_clip's
 * "merge every occurrence left to right" -- and the pairs the batch created are pushed only
 * after it, as open_clip only looks at them in its next round. Symbols keep the index of their
 * first byte, so index order is word order. sym (n,) in/out; returns the new length. */
static int64_t merge_heap(const ovs_bpe *bpe, bpe_scratch *s, int64_t n) {
    int32_t *sym = s->sym, *merged = s->tmp;
    int64_t size = 0;
    for (int64_t i = 0; i < n; i++) {
        s->prev[i] = (int32_t)(i - 1);
        s->next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
    }
    for (int64_t i = 0; i + 1 < n; i++) push_pair(bpe, s, &size, (int32_t)i);
    while (size > 0) {
        int32_t rank = s->heap[0].rank;
        int64_t n_merged = 0;
        while (size > 0 && s->heap[0].rank == rank) {
            heap_entry e = heap_pop(s->heap, &size);
            int32_t i = e.pos, j = s->next[i];
            if (sym[i] != e.a || j < 0 || sym[j] != e.b) continue;  /* stale */
            sym[i] = pair_find(bpe, e.a, e.b)->merged;
            sym[j] = -1;
            s->next[i] = s->next[j];
            if (s->next[j] >= 0) s->prev[s->next[j]] = i;
            merged[n_merged++] = i;
        }
        for (int64_t k = 0; k < n_merged; k++) {
            int32_t i = merged[k];
            if (s->prev[i] >= 0) push_pair(bpe, s, &size, s->prev[i]);
            push_pair(bpe, s, &size, i);
        }
    }
    int64_t k = 0;
    for (int32_t i = 0; i >= 0; i = s->next[i]) sym[k++] = sym[i];
    return k;
}

/* BPE of one pre-token w[0..n): writes up to `room` ids to out, *n_ids = its total ids. */
static int encode_word(ovs_bpe *bpe, bpe_scratch *s, const char *w, size_t n, int32_t *out,
                       int64_t room, int64_t *n_ids) {
    if (n == 15 && memcmp(w, "<start_of_text>", 15) == 0) {
        if (room > 0) out[0] = bpe->sot;
        *n_ids = 1;
        return OVS_OK;
    }
    if (n == 13 && memcmp(w, "<end_of_text>", 13) == 0) {
        if (room > 0) out[0] = bpe->eot;
        *n_ids = 1;
        return OVS_OK;
    }
    uint64_t h = 0;
    if (n <= CACHE_MAX_KEY) {
        h = hash_bytes(w, n) | 1;
        int64_t got = cache_get(bpe, w, n, h, out, room);
        if (got >= 0) {
            *n_ids = got;
            return OVS_OK;
        }
    }
    int st = scratch_reserve(s, (int64_t)n);
    if (st) return st;
    for (size_t i = 0; i + 1 < n; i++) s->sym[i] = bpe->byte_id[(uint8_t)w[i]];
    s->sym[n - 1] = bpe->byte_eow_id[(uint8_t)w[n - 1]];  /* the word-final symbol */
    int64_t threshold = __atomic_load_n(&bpe->heap_threshold, __ATOMIC_RELAXED);
    int64_t k = (int64_t)n >= threshold ? merge_heap(bpe, s, (int64_t)n)
                                        : merge_naive(bpe, s->sym, (int64_t)n, s->tmp);
    memcpy(out, s->sym, (size_t)(k < room ? k : room) * sizeof(int32_t));
    if (n <= CACHE_MAX_KEY) cache_put(bpe, w, n, h, s->sym, k);
    *n_ids = k;
    return OVS_OK;
}

/* ---------------------------------------------------------------- pre-tokenisation */
/* Encode validated UTF-8, stopping once `cap` ids are written. */
static int encode_text(ovs_bpe *bpe, bpe_scratch *s, const char *text, size_t len, int32_t *out,
                       int64_t cap, int64_t *n_out) {
    const uint8_t *t = (const uint8_t *)text;
    int64_t count = 0;
    size_t p = 0;
    while (p < len && count < cap) {
        int w;
        uint32_t cp = utf8_decode(t + p, len - p, &w);
        size_t q = p + (size_t)w;
        bool literal = false;
        if (cp == '<' || cp == '\'') {
            for (size_t k = 0; k < COUNT_OF(LITERALS) && !literal; k++) {
                size_t m = match_literal(t + p, len - p, LITERALS[k]);
                if (m) {
                    q = p + m;
                    literal = true;
                }
            }
        }
        if (!literal) {  /* a class run */
            int cls = cp_class(bpe, cp);
            if (cls == CP_SKIP) {
                p = q;
                continue;
            }
            if (cls != CP_NUMBER) {  /* letters and "other" extend over their class */
                while (q < len) {
                    int w2;
                    uint32_t c2 = utf8_decode(t + q, len - q, &w2);
                    if (cp_class(bpe, c2) != cls) break;
                    q += (size_t)w2;
                }
            }
        }
        int64_t n_ids;
        int st = encode_word(bpe, s, text + p, q - p, out + count, cap - count, &n_ids);
        if (st) return st;
        count += n_ids < cap - count ? n_ids : cap - count;
        p = q;
    }
    *n_out = count;
    return OVS_OK;
}

static int check_text(const char *text, size_t len, int64_t index) {
    size_t bad;
    if (!text && len) return ovs_set_error(OVS_ERR_ARG, "text %lld is NULL", (long long)index);
    if (len && !utf8_validate(text, len, &bad))
        return ovs_set_error(OVS_ERR_ARG, "text %lld is not valid UTF-8 (byte offset %zu)",
                             (long long)index, bad);
    return OVS_OK;
}

int ovs_bpe_encode(ovs_bpe *bpe, const char *text, size_t len, int32_t *out_ids, int64_t cap,
                   int64_t *n) {
    if (!bpe || !n || (cap > 0 && !out_ids) || cap < 0)
        return ovs_set_error(OVS_ERR_ARG, "ovs_bpe_encode: bad arguments");
    *n = 0;
    int st = check_text(text, len, 0);
    if (st) return st;
    bpe_scratch s = {0};
    st = encode_text(bpe, &s, text, len, out_ids, cap, n);
    scratch_free(&s);
    return st;
}

int ovs_tokenize_batch(ovs_bpe *bpe, const char *const *texts, const int64_t *lens, int64_t count,
                       int64_t context, int32_t *out) {
    if (!bpe || count < 0 || (count > 0 && (!texts || !lens || !out)))
        return ovs_set_error(OVS_ERR_ARG, "ovs_tokenize_batch: bad arguments");
    if (context < 2)
        return ovs_set_error(OVS_ERR_ARG, "context length must be >= 2, got %lld", (long long)context);
    size_t cells;
    if (ovs_mul_size(&cells, (size_t)count, (size_t)context))
        return ovs_set_error(OVS_ERR_OVERFLOW, "%lld x %lld token ids overflow", (long long)count,
                             (long long)context);
    for (int64_t i = 0; i < count; i++) {
        if (lens[i] < 0)
            return ovs_set_error(OVS_ERR_ARG, "text %lld has length %lld", (long long)i,
                                 (long long)lens[i]);
        int st = check_text(texts[i], (size_t)lens[i], i);
        if (st) return st;
    }
    memset(out, 0, cells * sizeof(int32_t));
    bpe_scratch s = {0};
    int st = OVS_OK;
    for (int64_t i = 0; i < count; i++) {
        int32_t *row = out + i * context;  /* (context,) */
        int64_t n;
        row[0] = bpe->sot;
        st = encode_text(bpe, &s, texts[i], (size_t)lens[i], row + 1, context - 2, &n);
        if (st) break;
        row[1 + n] = bpe->eot;
    }
    scratch_free(&s);
    return st;
}
