#ifndef GREET_H
#define GREET_H
/* Format a greeting for NAME into BUF (at most LEN bytes). Returns the length written. */
int greet_format(char *buf, unsigned long len, const char *name);
const char *greet_version(void);
#endif
