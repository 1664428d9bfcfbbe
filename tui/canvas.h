/* canvas.h - what a workbench screen draws on: a grid of cells (a wide
 * character and an attribute). The same drawing code serves the terminal
 * (the canvas is copied to curses after each frame) and the headless mode
 * the tests use (the canvas is dumped as text), so what the tests read is
 * what a user sees. */
#ifndef QS_TUI_CANVAS_H
#define QS_TUI_CANVAS_H

#include <stdio.h>
#include <wchar.h>

enum tui_attr {
	TUI_NORMAL = 0,
	TUI_BOLD = 1,
	TUI_REVERSE = 2,  /* the cursor row */
	TUI_DIM = 3,
	TUI_SELECTED = 4, /* rows in the selection */
	TUI_HEAT0 = 8,    /* TUI_HEAT0 + 0..4: sensitivity heat map, cold to hot */
};

typedef struct tui_cell {
	wchar_t ch;
	unsigned char attr;
} tui_cell;

typedef struct tui_canvas {
	int w, h;
	tui_cell *cells; /* (h, w) */
} tui_canvas;

int tui_canvas_init(tui_canvas *c, int w, int h);
void tui_canvas_release(tui_canvas *c);
void tui_canvas_clear(tui_canvas *c);
/* Write UTF-8 text at (y, x), clipped to the row and to max columns (max <=
 * 0: to the right edge). Returns the columns written. */
int tui_put(tui_canvas *c, int y, int x, int max, int attr, const char *utf8);
int tui_putf(tui_canvas *c, int y, int x, int max, int attr, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));
/* Set the attribute of a whole row (e.g. the cursor). */
void tui_row_attr(tui_canvas *c, int y, int attr);
/* The canvas as UTF-8 text, one line per row with trailing blanks cut. */
void tui_canvas_dump(const tui_canvas *c, FILE *out);

#endif
