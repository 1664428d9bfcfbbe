#include <stdio.h>
int main(void) { puts("qscope: under construction"); return 0; }
