/* A bounded JSON cursor for file headers (safetensors). Internal to csrc/io.
 *
 * Not a DOM: the caller walks the text with these primitives and decides what each value must
 * be. Nothing recurses, so hostile input cannot exhaust the C stack: ovs_json_skip() keeps its
 * own explicit stack of at most OVS_JSON_MAX_DEPTH open containers. Every failure returns
 * OVS_ERR_FORMAT with a message "<what> at byte <n>" (n counted from the start of the text).
 *
 *     ovs_json j;
 *     ovs_json_init(&j, text, size);
 *     if (ovs_json_expect(&j, '{')) return OVS_ERR_FORMAT;
 *     ...
 */
#ifndef OVS_IO_JSON_H
#define OVS_IO_JSON_H

#include <stddef.h>
#include <stdint.h>

#define OVS_JSON_MAX_DEPTH 64

typedef struct {
    const unsigned char *text;  /* (size,) UTF-8, not NUL-terminated */
    size_t size;
    size_t pos;                 /* next unread byte */
} ovs_json;

void ovs_json_init(ovs_json *j, const void *text, size_t size);

/* The next non-whitespace byte without consuming it, or -1 at the end of the text. */
int ovs_json_peek(ovs_json *j);

/* Consume the next non-whitespace byte if it is `c`; OVS_ERR_FORMAT otherwise. */
int ovs_json_expect(ovs_json *j, char c);

/* Parse a string. When `out` is not NULL the decoded UTF-8 goes there followed by a NUL; it
 * needs room for (raw length between the quotes + 1) bytes, which decoding never exceeds.
 * *len (optional) receives the decoded length, which may include embedded NULs from \u0000.
 * Validates UTF-8, escapes, \uXXXX and surrogate pairs; rejects raw control characters. */
int ovs_json_string(ovs_json *j, char *out, size_t *len);

/* Parse a non-negative integer (no sign, fraction or exponent) <= INT64_MAX. */
int ovs_json_uint(ovs_json *j, int64_t *out);

/* Skip one value of any kind, validating it, with nesting <= OVS_JSON_MAX_DEPTH. */
int ovs_json_skip(ovs_json *j);

/* Consume the literal `null` if it comes next: 1 if consumed, 0 otherwise. */
int ovs_json_null(ovs_json *j);

/* After an object member: consume a ',' (returns 1: another member follows) or the closing '}'
 * (returns 0); returns -1, consuming nothing, for anything else (the caller reports it). */
int ovs_json_member_end(ovs_json *j);

/* OK if only whitespace remains, OVS_ERR_FORMAT otherwise. */
int ovs_json_end(ovs_json *j);

#endif
