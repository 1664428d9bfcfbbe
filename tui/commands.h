/* commands.h - subcommands that live in their own files (tui/cmd_*.c); the
 * table in main.c lists them with their usage and summary. */
#ifndef QS_COMMANDS_H
#define QS_COMMANDS_H

#include "cli.h"

int cmd_stats(int argc, char **argv);
const opt *stats_opts(void);

int cmd_quant(int argc, char **argv);
const opt *quant_opts_table(void);

#endif
