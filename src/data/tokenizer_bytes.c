/* UTF-8 helpers and GPT-2's byte-level alphabet: each of the 256 byte values stands for one
 * printable character, so that any byte string is a string of "characters" for BPE. */
#include "data/tokenizer_internal.h"

#include <pthread.h>
#include <string.h>

/* The range of the second byte allowed after lead byte c (Unicode Table 3-7). */
static bool second_ok(unsigned char c, unsigned char d) {
    if (c == 0xE0) return d >= 0xA0 && d <= 0xBF;
    if (c == 0xED) return d >= 0x80 && d <= 0x9F;
    if (c == 0xF0) return d >= 0x90 && d <= 0xBF;
    if (c == 0xF4) return d >= 0x80 && d <= 0x8F;
    return d >= 0x80 && d <= 0xBF;
}

static int lead_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

/* Bytes of the valid prefix of the sequence at p (how far a decoder gets before failing). */
static int valid_prefix(const unsigned char *p, size_t n, int need) {
    int k = 1;
    if (need > 1 && n > 1 && second_ok(p[0], p[1])) {
        k = 2;
        while (k < need && (size_t)k < n && (p[k] & 0xC0) == 0x80)
            k++;
    }
    return k;
}

int tk_utf8_valid_len(const unsigned char *p, size_t n) {
    if (!n) return 0;
    int need = lead_len(p[0]);
    if (!need || (size_t)need > n) return 0;
    return valid_prefix(p, n, need) == need ? need : 0;
}

uint32_t tk_utf8_decode(const unsigned char *p, int len) {
    switch (len) {
    case 1: return p[0];
    case 2: return (uint32_t)(p[0] & 0x1F) << 6 | (p[1] & 0x3F);
    case 3: return (uint32_t)(p[0] & 0x0F) << 12 | (uint32_t)(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
    default:
        return (uint32_t)(p[0] & 0x07) << 18 | (uint32_t)(p[1] & 0x3F) << 12 |
               (uint32_t)(p[2] & 0x3F) << 6 | (p[3] & 0x3F);
    }
}

int tk_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) return o[0] = (unsigned char)cp, 1;
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6), o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

bool tk_utf8_is_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        int k = tk_utf8_valid_len(p + i, n - i);
        if (!k) return false;
        i += (size_t)k;
    }
    return true;
}

bool tk_utf8_lossy(tk_buf *out, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of the pending valid bytes */
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        int k = tk_utf8_valid_len(p + i, n - i);
        if (k) {
            i += (size_t)k;
            continue;
        }
        if (!tk_buf_put(out, s + run, i - run)) return false;
        int need = lead_len(p[i]);
        i += need ? (size_t)valid_prefix(p + i, n - i, need) : 1;
        if (!tk_buf_put(out, "\xEF\xBF\xBD", 3)) return false;
        run = i;
    }
    return tk_buf_put(out, s + run, n - run);
}

/* ---- the byte-level alphabet ---- */

static char byte_chars[256][3];
static int16_t char_bytes[512]; /* code point -> byte + 1 (0 = none); all lie below 324 */
static pthread_once_t bytes_once = PTHREAD_ONCE_INIT;

static bool printable(int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static void build_bytes(void) {
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = printable(b) ? (uint32_t)b : (uint32_t)(256 + extra++);
        int l = tk_utf8_encode(cp, byte_chars[b]);
        byte_chars[b][l] = 0;
        char_bytes[cp] = (int16_t)(b + 1);
    }
}

const char *tk_byte_char(uint8_t b) {
    pthread_once(&bytes_once, build_bytes);
    return byte_chars[b];
}

int tk_char_byte(uint32_t cp) {
    pthread_once(&bytes_once, build_bytes);
    return cp < 512 ? char_bytes[cp] - 1 : -1;
}
