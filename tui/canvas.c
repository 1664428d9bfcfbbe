/* canvas.c - see canvas.h. */
#include "canvas.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

int tui_canvas_init(tui_canvas *c, int w, int h)
{
	c->w = w < 1 ? 1 : w;
	c->h = h < 1 ? 1 : h;
	c->cells = calloc((size_t)c->w * c->h, sizeof(tui_cell));
	if (!c->cells)
		return -1;
	tui_canvas_clear(c);
	return 0;
}

void tui_canvas_release(tui_canvas *c)
{
	free(c->cells);
	c->cells = NULL;
}

void tui_canvas_clear(tui_canvas *c)
{
	for (int i = 0; i < c->w * c->h; i++) {
		c->cells[i].ch = L' ';
		c->cells[i].attr = TUI_NORMAL;
	}
}

/* one UTF-8 sequence at s: its code point, and its length in *n */
static wchar_t utf8_next(const unsigned char *s, int *n)
{
	if (s[0] < 0x80) {
		*n = 1;
		return s[0];
	}
	int len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 0;
	if (!len) {
		*n = 1;
		return L'?';
	}
	wchar_t v = s[0] & (0x7f >> len);
	for (int i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80) {
			*n = i;
			return L'?';
		}
		v = (v << 6) | (s[i] & 0x3f);
	}
	*n = len;
	return v;
}

int tui_put(tui_canvas *c, int y, int x, int max, int attr, const char *utf8)
{
	if (y < 0 || y >= c->h || x >= c->w)
		return 0;
	int end = max > 0 && x + max < c->w ? x + max : c->w, col = x;
	const unsigned char *s = (const unsigned char *)utf8;
	while (*s && col < end) {
		int n;
		wchar_t ch = utf8_next(s, &n);
		s += n;
		if (ch < 32)
			ch = L' ';
		if (col >= 0) {
			c->cells[(size_t)y * c->w + col].ch = ch;
			c->cells[(size_t)y * c->w + col].attr = (unsigned char)attr;
		}
		col++;
	}
	return col - x;
}

int tui_putf(tui_canvas *c, int y, int x, int max, int attr, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	return tui_put(c, y, x, max, attr, buf);
}

void tui_row_attr(tui_canvas *c, int y, int attr)
{
	if (y < 0 || y >= c->h)
		return;
	for (int x = 0; x < c->w; x++)
		c->cells[(size_t)y * c->w + x].attr = (unsigned char)attr;
}

static void put_utf8(FILE *out, wchar_t ch)
{
	unsigned v = (unsigned)ch;
	if (v < 0x80) {
		fputc((int)v, out);
	} else if (v < 0x800) {
		fputc(0xc0 | (v >> 6), out);
		fputc(0x80 | (v & 0x3f), out);
	} else if (v < 0x10000) {
		fputc(0xe0 | (v >> 12), out);
		fputc(0x80 | ((v >> 6) & 0x3f), out);
		fputc(0x80 | (v & 0x3f), out);
	} else {
		fputc(0xf0 | (v >> 18), out);
		fputc(0x80 | ((v >> 12) & 0x3f), out);
		fputc(0x80 | ((v >> 6) & 0x3f), out);
		fputc(0x80 | (v & 0x3f), out);
	}
}

void tui_canvas_dump(const tui_canvas *c, FILE *out)
{
	for (int y = 0; y < c->h; y++) {
		const tui_cell *row = c->cells + (size_t)y * c->w;
		int n = c->w;
		while (n > 0 && row[n - 1].ch == L' ')
			n--;
		for (int x = 0; x < n; x++)
			put_utf8(out, row[x].ch);
		fputc('\n', out);
	}
}
