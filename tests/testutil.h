/* testutil.h - helpers shared by the cmocka tests (run from the project root). */
#ifndef QS_TESTUTIL_H
#define QS_TESTUTIL_H

#include <stddef.h>

/* Path of a file under the shared read-only data: $QSCOPE_SHARED or ../shared.
 * Returns a static buffer (one per call site is fine: copy it if you keep two). */
const char *tu_shared(const char *rel);
/* A fresh temporary directory for this test process (removed at exit). */
const char *tu_tmpdir(void);
/* A path under tu_tmpdir(), printf-style; a ring of 8 static buffers. */
char *tu_tmppath(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Read a whole file; *len gets its size. Returns malloc'd buffer + NUL, or NULL. */
char *tu_read_file(const char *path, size_t *len);
/* Write a whole file; returns 0 on success. */
int tu_write_file(const char *path, const void *data, size_t len);
/* Run a shell command (stderr to err_path, or left alone when NULL); *out
 * (may be NULL) gets its stdout, malloc'd. Returns the exit code, -1 if it
 * did not exit normally. */
int tu_run(const char *cmd, const char *err_path, char **out);
/* The qscope binary the end-to-end tests run: $QSCOPE_BIN, else build/qscope. */
const char *tu_bin(void);
/* Nonzero when running under the sanitizer build (QSCOPE_ASAN=1): long tests
 * shrink their workload. */
int tu_asan(void);

struct model;
/* The input of `site` (enum fwd_site) of block `layer` for tokens (n_seq x
 * len), BOS first in each sequence, from m's own forward pass (four
 * sequences at a time): malloc'd (*rows = n_seq * len, *cols), or NULL. */
float *tu_capture_site(const struct model *m, const int *tokens, int n_seq, int len, int layer,
		       int site, int *rows, int *cols);

struct gguf_file;
struct gguf_writer;
/* Open the GGUF at path into *g (NULL on failure) and return a new writer
 * holding all of its metadata keys, for a test that writes a changed copy;
 * NULL on any failure. The caller adds tensors, then frees both. */
struct gguf_writer *tu_gguf_copy_meta(const char *path, struct gguf_file **g);

#endif
