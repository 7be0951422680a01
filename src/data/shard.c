/* Token shards in llm.c's layout: 256 little-endian int32 header words (magic 20240520,
 * version, token count), then the tokens (uint16 for version 1, uint32 for version 2). */
#include "data/data_internal.h"
#include "ferric/io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_BYTES (FE_SHARD_HEADER_WORDS * 4)

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16),
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p) {
    return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

fe_status fe_shard_write(const char *path, const int32_t *tokens, int64_t n, int token_bytes) {
    if (!path || n < 0 || (n > 0 && !tokens))
        return fe_set_error(FE_ERR_ARG, "fe_shard_write: bad arguments");
    if (token_bytes != 2 && token_bytes != 4)
        return fe_set_error(FE_ERR_ARG, "fe_shard_write: token_bytes must be 2 or 4, not %d",
                            token_bytes);
    if (n > INT32_MAX)
        return fe_set_error(FE_ERR_RANGE,
                            "fe_shard_write: %lld tokens do not fit the header's "
                            "int32 count",
                            (long long)n);
    int64_t maxv = token_bytes == 2 ? 0xFFFF : INT32_MAX;
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] > maxv)
            return fe_set_error(FE_ERR_RANGE,
                                "fe_shard_write: token %d at position %lld does not "
                                "fit in %d bytes",
                                tokens[i], (long long)i, token_bytes);
    uint8_t header[HEADER_BYTES];
    memset(header, 0, sizeof header);
    put_u32(header, FE_SHARD_MAGIC);
    put_u32(header + 4, token_bytes == 2 ? 1 : 2);
    put_u32(header + 8, (uint32_t)n);
    fe_atomic_file *af = fe_atomic_open(path);
    if (!af) return fe_last_status();
    fe_status st = fe_atomic_write(af, header, sizeof header);
    uint8_t buf[1 << 16];
    size_t fill = 0;
    for (int64_t i = 0; i < n && !st; i++) {
        uint32_t v = (uint32_t)tokens[i];
        if (token_bytes == 2)
            buf[fill] = (uint8_t)v, buf[fill + 1] = (uint8_t)(v >> 8);
        else
            put_u32(buf + fill, v);
        fill += (size_t)token_bytes;
        if (fill == sizeof buf) {
            st = fe_atomic_write(af, buf, fill);
            fill = 0;
        }
    }
    if (!st) st = fe_atomic_write(af, buf, fill);
    if (st) {
        fe_atomic_abort(af);
        return st;
    }
    return fe_atomic_commit(af);
}

fe_dataset *fe_dataset_open_shard(const char *path) {
    if (!path) {
        fe_set_error(FE_ERR_ARG, "fe_dataset_open_shard: NULL path");
        return NULL;
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        fe_set_error(FE_ERR_IO, "cannot open shard '%s': %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        fe_set_error(FE_ERR_IO, "cannot stat shard '%s': %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    size_t size = (size_t)sb.st_size;
    if (size < HEADER_BYTES) {
        fe_set_error(FE_ERR_FORMAT, "shard '%s': truncated header (%zu bytes, need %d)", path, size,
                     HEADER_BYTES);
        close(fd);
        return NULL;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        fe_set_error(FE_ERR_IO, "cannot map shard '%s': %s", path, strerror(errno));
        return NULL;
    }
    const uint8_t *p = map;
    uint32_t magic = get_u32(p), version = get_u32(p + 4);
    int32_t count = (int32_t)get_u32(p + 8);
    int width = version == 1 ? 2 : 4;
    size_t room = (size - HEADER_BYTES) / (size_t)width;
    if (magic != FE_SHARD_MAGIC) {
        fe_set_error(FE_ERR_FORMAT, "shard '%s': bad magic %u (expected %d)", path, magic,
                     FE_SHARD_MAGIC);
    } else if (version != 1 && version != 2) {
        fe_set_error(FE_ERR_FORMAT, "shard '%s': unsupported version %u (1 = uint16, 2 = uint32)",
                     path, version);
    } else if (count < 0) {
        fe_set_error(FE_ERR_FORMAT, "shard '%s': negative token count %d", path, count);
    } else if ((size_t)count > room) {
        fe_set_error(FE_ERR_FORMAT,
                     "shard '%s': token count %d runs past the end of the file "
                     "(room for %zu tokens)",
                     path, count, room);
    } else if (HEADER_BYTES + (size_t)count * (size_t)width != size) {
        fe_set_error(FE_ERR_FORMAT, "shard '%s': %zu trailing bytes after %d tokens", path,
                     size - HEADER_BYTES - (size_t)count * (size_t)width, count);
    } else {
        madvise(map, size, MADV_WILLNEED);
        fe_token_store *st = fe__store_new(p + HEADER_BYTES, count, width, NULL, map, size);
        if (!st) {
            munmap(map, size);
            return NULL;
        }
        fe_dataset *ds = fe__dataset_wrap(st, 0, count);
        fe__store_release(st);
        return ds;
    }
    munmap(map, size);
    return NULL;
}
