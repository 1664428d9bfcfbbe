/* placeholder until qscope stats lands */
#include "commands.h"

static const opt o[] = { { NULL, NULL, 0, NULL, NULL, NULL } };
const opt *stats_opts(void) { return o; }
int cmd_stats(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "qscope stats: not implemented yet\n");
	return EXIT_USAGE;
}
