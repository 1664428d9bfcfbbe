#include "mapfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int qs_map_open(qs_map *m, const char *path, qs_error *err)
{
	m->data = NULL;
	m->size = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return qs_err(err, QS_EIO, "%s: cannot open: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) != 0) {
		int e = errno;
		close(fd);
		return qs_err(err, QS_EIO, "%s: cannot stat: %s", path, strerror(e));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return qs_err(err, QS_EIO, "%s: not a regular file", path);
	}
	if (st.st_size == 0) {
		close(fd);
		return 0;
	}
	void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	int e = errno;
	close(fd);
	if (p == MAP_FAILED)
		return qs_err(err, QS_EIO, "%s: cannot map: %s", path, strerror(e));
	m->data = p;
	m->size = (size_t)st.st_size;
	return 0;
}

void qs_map_close(qs_map *m)
{
	if (m->data)
		munmap((void *)m->data, m->size);
	m->data = NULL;
	m->size = 0;
}

int qs_write_atomic(const char *path, const void *data, size_t len, qs_error *err)
{
	char tmp[4200];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
		return qs_err(err, QS_EUSAGE, "%s: path too long", path);
	FILE *f = fopen(tmp, "wb");
	if (!f)
		return qs_err(err, QS_EIO, "%s: cannot create: %s", tmp, strerror(errno));
	int bad = fwrite(data, 1, len, f) != len;
	bad |= fflush(f) != 0 || fsync(fileno(f)) != 0;
	bad |= fclose(f) != 0;
	if (bad || rename(tmp, path) != 0) {
		int e = errno;
		unlink(tmp);
		return qs_err(err, QS_EIO, "%s: cannot write: %s", path, strerror(e));
	}
	return 0;
}
