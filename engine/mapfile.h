/* mapfile.h - read-only memory maps of whole files, and atomic writes. */
#ifndef QS_MAPFILE_H
#define QS_MAPFILE_H

#include <stddef.h>

#include "error.h"

typedef struct qs_map {
	const unsigned char *data; /* (size) bytes, read-only; NULL when size is 0 */
	size_t size;
} qs_map;

/* Map path read-only. On error fills err naming the file. */
int qs_map_open(qs_map *m, const char *path, qs_error *err);
/* Unmap; accepts a zeroed struct. */
void qs_map_close(qs_map *m);
/* Write len bytes to path atomically: a temporary file next to it, fsync,
 * rename (readers see the old file or the new one, never half of one). */
int qs_write_atomic(const char *path, const void *data, size_t len, qs_error *err);

#endif
