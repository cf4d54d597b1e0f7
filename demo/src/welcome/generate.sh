#!/bin/sh
# Render the MANGOS welcome banner with the greet tool the farm built.
set -eu
greet="$1"
out="$2"
mkdir -p "$out"
{
	echo "Welcome to MANGOS"
	"$greet" operator
	"$greet" -V
} > "$out/motd"
