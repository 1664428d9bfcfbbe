/* error.h - error values shared by every engine module.
 *
 * Fallible functions return 0 or a negative QS_E* code and fill a caller-owned
 * qs_error with a one-line, lower-case message naming the file and field. */
#ifndef QS_ERROR_H
#define QS_ERROR_H

#include <stddef.h>

enum {
	QS_OK = 0,
	QS_EIO = -1,      /* cannot open/read/write a file */
	QS_EFORMAT = -2,  /* the file's contents are invalid */
	QS_ENOMEM = -3,   /* allocation failed or size overflow */
	QS_EUSAGE = -4,   /* bad argument from the caller/user */
	QS_ECANCEL = -5,  /* cancelled through a progress callback */
	QS_EUNSUPP = -6,  /* valid input we do not support yet */
};

typedef struct qs_error {
	int code;
	char msg[512];
} qs_error;

/* Fill err (may be NULL) and return code. printf-style. */
int qs_err(qs_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* n bytes of untrusted text (from a file or user) made fit for a one-line
 * message in buf (cap >= 16): printable ASCII kept, other bytes written as
 * \xNN, cut after max input bytes with "...". Returns buf. */
const char *qs_printable(char *buf, size_t cap, const char *s, size_t n, size_t max);
/* The same for a NUL-terminated string, cut after 120 bytes. */
const char *qs_printz(char *buf, size_t cap, const char *s);

/* Progress/cancel callback: called with done/total; return nonzero to cancel. */
typedef int (*qs_progress_fn)(void *user, long done, long total);

#endif
