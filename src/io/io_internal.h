/* Internals shared by the src/io files. Not installed. */
#ifndef FE_IO_INTERNAL_H
#define FE_IO_INTERNAL_H

#include "ferric/io.h"

/* Read a whole text file (at most max_bytes) into a malloc'ed, NUL-terminated buffer.
 * NULL with FE_ERR_IO (missing, unreadable, a folder) or FE_ERR_FORMAT (too large). */
char *fe__read_text_file(const char *path, size_t max_bytes, size_t *len);
/* "dir/name" malloc'ed (just name when dir is empty). */
char *fe__path_join(const char *dir, const char *name);
/* True when path exists and is a folder / a regular file. */
bool fe__is_dir(const char *path);
bool fe__is_file(const char *path);

#endif
