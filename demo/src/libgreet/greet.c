#include <stdio.h>
#include "greet.h"

int greet_format(char *buf, unsigned long len, const char *name)
{
	return snprintf(buf, len, "Hello, %s, from a verified build!", name ? name : "world");
}

const char *greet_version(void)
{
	return "libgreet 1.0.0";
}
