/* Bounded, non-recursive JSON cursor (see json.h). Grammar: RFC 8259. */
#include "io/json.h"

#include "ovs/ovs.h"

#include <stdio.h>
#include <string.h>

void ovs_json_init(ovs_json *j, const void *text, size_t size) {
    j->text = text;
    j->size = size;
    j->pos = 0;
}

static void skip_ws(ovs_json *j) {
    while (j->pos < j->size) {
        unsigned char c = j->text[j->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        j->pos++;
    }
}

/* A readable description of the byte at the cursor for error messages. */
static const char *describe(const ovs_json *j, char buf[16]) {
    if (j->pos >= j->size) return "end of header";
    unsigned char c = j->text[j->pos];
    if (c >= 0x20 && c < 0x7f && c != '\'')
        snprintf(buf, 16, "'%c'", c);
    else
        snprintf(buf, 16, "byte 0x%02x", c);
    return buf;
}

static int fail(const ovs_json *j, const char *what) {
    char buf[16];
    return ovs_set_error(OVS_ERR_FORMAT, "invalid JSON at byte %zu: %s, found %s", j->pos, what,
                         describe(j, buf));
}

int ovs_json_peek(ovs_json *j) {
    skip_ws(j);
    return j->pos < j->size ? j->text[j->pos] : -1;
}

int ovs_json_expect(ovs_json *j, char c) {
    if (ovs_json_peek(j) != (unsigned char)c) {
        char what[32];
        snprintf(what, sizeof what, "expected '%c'", c);
        return fail(j, what);
    }
    j->pos++;
    return OVS_OK;
}

static int hex4(const ovs_json *j, size_t at, uint32_t *out) {
    if (at + 4 > j->size) return -1;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = j->text[at + i];
        uint32_t d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v * 16 + d;
    }
    *out = v;
    return 0;
}

/* Length of the valid UTF-8 sequence starting at s[0] (n bytes available), 0 if invalid
 * (overlong forms, surrogates, code points above U+10FFFF, truncation). */
static size_t utf8_length(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return (n >= 2 && (s[1] & 0xc0) == 0x80) ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80) return 0;
        if (c == 0xe0 && s[1] < 0xa0) return 0;   /* overlong */
        if (c == 0xed && s[1] >= 0xa0) return 0;  /* UTF-16 surrogate */
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
            return 0;
        if (c == 0xf0 && s[1] < 0x90) return 0;   /* overlong */
        if (c == 0xf4 && s[1] >= 0x90) return 0;  /* above U+10FFFF */
        return 4;
    }
    return 0;
}

static size_t utf8_encode(char *out, uint32_t cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

int ovs_json_string(ovs_json *j, char *out, size_t *len) {
    if (ovs_json_peek(j) != '"') return fail(j, "expected a string");
    j->pos++;
    size_t n = 0;  /* decoded bytes written */
    for (;;) {
        if (j->pos >= j->size) return fail(j, "unterminated string");
        unsigned char c = j->text[j->pos];
        if (c == '"') {
            j->pos++;
            break;
        }
        if (c < 0x20) return fail(j, "control character inside a string");
        if (c != '\\') {
            size_t k = utf8_length(j->text + j->pos, j->size - j->pos);
            if (k == 0) return fail(j, "invalid UTF-8 inside a string");
            if (out) memcpy(out + n, j->text + j->pos, k);
            n += k;
            j->pos += k;
            continue;
        }
        /* An escape: the decoded form is never longer than the escape itself. */
        if (j->pos + 1 >= j->size) return fail(j, "unterminated escape");
        unsigned char e = j->text[j->pos + 1];
        char simple = 0;
        switch (e) {
        case '"': simple = '"'; break;
        case '\\': simple = '\\'; break;
        case '/': simple = '/'; break;
        case 'b': simple = '\b'; break;
        case 'f': simple = '\f'; break;
        case 'n': simple = '\n'; break;
        case 'r': simple = '\r'; break;
        case 't': simple = '\t'; break;
        case 'u': break;
        default: j->pos++; return fail(j, "invalid escape");
        }
        if (e != 'u') {
            if (out) out[n] = simple;
            n++;
            j->pos += 2;
            continue;
        }
        uint32_t cp;
        if (hex4(j, j->pos + 2, &cp)) {
            j->pos += 2;
            return fail(j, "\\u must be followed by 4 hex digits");
        }
        size_t used = 6;
        if (cp >= 0xdc00 && cp <= 0xdfff) return fail(j, "unpaired low surrogate in \\u escape");
        if (cp >= 0xd800 && cp <= 0xdbff) {
            uint32_t lo;
            size_t at = j->pos + 6;
            if (at + 2 > j->size || j->text[at] != '\\' || j->text[at + 1] != 'u' ||
                hex4(j, at + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
                return fail(j, "high surrogate in \\u escape not followed by a low surrogate");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            used = 12;
        }
        if (out)
            n += utf8_encode(out + n, cp);
        else
            n += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        j->pos += used;
    }
    if (out) out[n] = '\0';
    if (len) *len = n;
    return OVS_OK;
}

int ovs_json_uint(ovs_json *j, int64_t *out) {
    int c = ovs_json_peek(j);
    if (c == '-') return fail(j, "expected a non-negative integer");
    if (c < '0' || c > '9') return fail(j, "expected a non-negative integer");
    size_t start = j->pos;
    uint64_t v = 0;
    while (j->pos < j->size && j->text[j->pos] >= '0' && j->text[j->pos] <= '9') {
        uint64_t d = j->text[j->pos] - '0';
        if (v > ((uint64_t)INT64_MAX - d) / 10) {
            j->pos = start;
            return fail(j, "integer larger than 2^63-1");
        }
        v = v * 10 + d;
        j->pos++;
    }
    if (j->pos - start > 1 && j->text[start] == '0') {
        j->pos = start;
        return fail(j, "integer with a leading zero");
    }
    if (j->pos < j->size) {
        unsigned char t = j->text[j->pos];
        if (t == '.' || t == 'e' || t == 'E') return fail(j, "expected an integer, not a fraction");
    }
    *out = (int64_t)v;
    return OVS_OK;
}

/* A number of any form (validated, value discarded). */
static int skip_number(ovs_json *j) {
    size_t p = j->pos;
    const unsigned char *s = j->text;
    if (p < j->size && s[p] == '-') p++;
    if (p >= j->size || s[p] < '0' || s[p] > '9') {
        j->pos = p;
        return fail(j, "invalid number");
    }
    if (s[p] == '0') {
        p++;
    } else {
        while (p < j->size && s[p] >= '0' && s[p] <= '9') p++;
    }
    if (p < j->size && s[p] == '.') {
        p++;
        if (p >= j->size || s[p] < '0' || s[p] > '9') {
            j->pos = p;
            return fail(j, "invalid number: digits expected after '.'");
        }
        while (p < j->size && s[p] >= '0' && s[p] <= '9') p++;
    }
    if (p < j->size && (s[p] == 'e' || s[p] == 'E')) {
        p++;
        if (p < j->size && (s[p] == '+' || s[p] == '-')) p++;
        if (p >= j->size || s[p] < '0' || s[p] > '9') {
            j->pos = p;
            return fail(j, "invalid number: digits expected in the exponent");
        }
        while (p < j->size && s[p] >= '0' && s[p] <= '9') p++;
    }
    j->pos = p;
    return OVS_OK;
}

static int skip_literal(ovs_json *j, const char *word) {
    size_t n = strlen(word);
    if (j->size - j->pos < n || memcmp(j->text + j->pos, word, n) != 0)
        return fail(j, "invalid literal");
    j->pos += n;
    return OVS_OK;
}

int ovs_json_null(ovs_json *j) {
    if (ovs_json_peek(j) != 'n') return 0;
    if (j->size - j->pos < 4 || memcmp(j->text + j->pos, "null", 4) != 0) return 0;
    j->pos += 4;
    return 1;
}

int ovs_json_member_end(ovs_json *j) {
    int c = ovs_json_peek(j);
    if (c != ',' && c != '}') return -1;
    j->pos++;
    return c == ',';
}

int ovs_json_skip(ovs_json *j) {
    char stack[OVS_JSON_MAX_DEPTH];  /* closing bracket of each open container */
    int depth = 0;
    int err;
    for (;;) {
        /* A value starts here. */
        int c = ovs_json_peek(j);
        if (c == '{' || c == '[') {
            if (depth == OVS_JSON_MAX_DEPTH) {
                char what[64];
                snprintf(what, sizeof what, "nesting deeper than %d levels", OVS_JSON_MAX_DEPTH);
                return fail(j, what);
            }
            j->pos++;
            stack[depth++] = c == '{' ? '}' : ']';
            int next = ovs_json_peek(j);
            if (next == stack[depth - 1]) {
                j->pos++;
                depth--;
            } else {
                if (c == '{') {
                    if ((err = ovs_json_string(j, NULL, NULL)) || (err = ovs_json_expect(j, ':')))
                        return err;
                }
                continue;  /* parse the first element */
            }
        } else if (c == '"') {
            if ((err = ovs_json_string(j, NULL, NULL))) return err;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            if ((err = skip_number(j))) return err;
        } else if (c == 't') {
            if ((err = skip_literal(j, "true"))) return err;
        } else if (c == 'f') {
            if ((err = skip_literal(j, "false"))) return err;
        } else if (c == 'n') {
            if ((err = skip_literal(j, "null"))) return err;
        } else {
            return fail(j, "expected a value");
        }
        /* A value ended: close containers or move to the next element. */
        for (;;) {
            if (depth == 0) return OVS_OK;
            int next = ovs_json_peek(j);
            if (next == stack[depth - 1]) {
                j->pos++;
                depth--;
                continue;
            }
            if (next != ',') {
                return fail(j, stack[depth - 1] == '}' ? "expected ',' or '}'"
                                                       : "expected ',' or ']'");
            }
            j->pos++;
            if (stack[depth - 1] == '}') {
                if ((err = ovs_json_string(j, NULL, NULL)) || (err = ovs_json_expect(j, ':')))
                    return err;
            }
            break;
        }
    }
}

int ovs_json_end(ovs_json *j) {
    if (ovs_json_peek(j) != -1) return fail(j, "unexpected data after the JSON value");
    return OVS_OK;
}
