/*
 * A stand-in for bpftrace, for the paths real bpftrace cannot be made to take on demand. Built by
 * the end-to-end tests (tests/e2e/support/double.rs) and given to an agent with --bpftrace.
 *
 * Called as bpftrace is: `bpftrace --version`, or `bpftrace -- PROGRAM_FILE ARGS...`. What it
 * does comes from lines of the program file of the form `// double: KEY[=VALUE]`:
 *   attach=N         print "Attaching N probes..." once started (default 1)
 *   attach=never     never attach: print "still compiling" on stderr and sleep (not polling)
 *   attach-delay-ms=N take N ms to attach (as a large program compiles), then attach
 *   sigint=ignore    ignore SIGINT (only SIGKILL ends it)
 *   sigint=second    act only on the second SIGINT (as a stuck bpftrace 0.17 was seen to)
 *   print-binary     once attached, print bytes that are not UTF-8, then go on
 *   flood            once attached, print lines as fast as it can until SIGINT
 *   flood-stderr     once attached, print a line, then warnings on stderr as fast as it can
 *                    until SIGINT
 *   print-every-ms=N once attached, print a line every N ms until SIGINT
 *   idle-ms=N        otherwise wait for events N ms at a time (default 20; a signal ends the
 *                    wait at once): many idle doubles on one machine cost little
 *   flood-after-stop=BYTES   on SIGINT, print BYTES more of printf lines before the maps
 *   exit-after-ms=N  end on its own N ms after attaching, printing its maps
 *   exit-delay-ms=N  once stopped, wait N ms before printing its maps (as bpftrace 0.17 can
 *                    take seconds to detach its probes)
 *   exit-code=N      the exit status when it ends (default 0)
 *   maps=TEXT        the maps printed on the way out (default "@x: 1"; \n for a newline)
 *   record=PATH      once started, append a line naming its program file to PATH (one line per
 *                    run, so a test can tell a trace that ran twice)
 * Attached, it waits for events in poll(), as bpftrace does, so it looks attached from /proc.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t interrupted, sigints, needed = 1;

static void on_sigint(int sig) {
	(void)sig;
	if (++sigints >= needed)
		interrupted = 1;
}

static void write_all(int fd, const char *buf, size_t len) {
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n <= 0)
			return;
		buf += n;
		len -= (size_t)n;
	}
}

static void say(int fd, const char *text) { write_all(fd, text, strlen(text)); }

static long long now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
	if (argc > 1 && strcmp(argv[1], "--version") == 0) {
		say(1, "bpftrace v0.0.0-double\n");
		return 0;
	}
	const char *program = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0 && i + 1 < argc) {
			program = argv[i + 1];
			break;
		}
	}
	if (!program) {
		say(2, "usage: bpftrace -- PROGRAM\n");
		return 2;
	}
	FILE *f = fopen(program, "r");
	if (!f) {
		say(2, "ERROR: cannot open the program\n");
		return 1;
	}
	int attach = 1, never = 0, ignore = 0, binary = 0, flood = 0, flood_err = 0, code = 0;
	long long exit_after = -1, exit_delay = 0, flood_after_stop = 0, every = 0, idle = 20;
	long long attach_delay = 0;
	char maps[4096] = "@x: 1";
	char record[4096] = "";
	char line[8192];
	while (fgets(line, sizeof line, f)) {
		char *d = strstr(line, "// double: ");
		if (!d)
			continue;
		d += strlen("// double: ");
		d[strcspn(d, "\n")] = 0;
		if (strcmp(d, "attach=never") == 0)
			never = 1;
		else if (strncmp(d, "attach-delay-ms=", 16) == 0)
			attach_delay = atoll(d + 16);
		else if (strncmp(d, "attach=", 7) == 0)
			attach = atoi(d + 7);
		else if (strcmp(d, "sigint=ignore") == 0)
			ignore = 1;
		else if (strcmp(d, "sigint=second") == 0)
			needed = 2;
		else if (strcmp(d, "print-binary") == 0)
			binary = 1;
		else if (strcmp(d, "flood") == 0)
			flood = 1;
		else if (strcmp(d, "flood-stderr") == 0)
			flood_err = 1;
		else if (strncmp(d, "flood-after-stop=", 17) == 0)
			flood_after_stop = atoll(d + 17);
		else if (strncmp(d, "print-every-ms=", 15) == 0)
			every = atoll(d + 15);
		else if (strncmp(d, "idle-ms=", 8) == 0)
			idle = atoll(d + 8);
		else if (strncmp(d, "exit-after-ms=", 14) == 0)
			exit_after = atoll(d + 14);
		else if (strncmp(d, "exit-delay-ms=", 14) == 0)
			exit_delay = atoll(d + 14);
		else if (strncmp(d, "exit-code=", 10) == 0)
			code = atoi(d + 10);
		else if (strncmp(d, "record=", 7) == 0)
			snprintf(record, sizeof record, "%s", d + 7);
		else if (strncmp(d, "maps=", 5) == 0) {
			/* \n in the directive stands for a newline. */
			char *out = maps;
			for (char *in = d + 5; *in && out < maps + sizeof maps - 1; in++) {
				if (in[0] == '\\' && in[1] == 'n') {
					*out++ = '\n';
					in++;
				} else {
					*out++ = *in;
				}
			}
			*out = 0;
		}
	}
	fclose(f);
	signal(SIGINT, ignore ? SIG_IGN : on_sigint);
	if (record[0]) {
		/* One write with O_APPEND: lines of doubles started at once never interleave. */
		FILE *r = fopen(record, "a");
		if (r) {
			char entry[4200];
			snprintf(entry, sizeof entry, "%s\n", program);
			fputs(entry, r);
			fclose(r);
		}
	}

	if (never) {
		say(2, "double: still compiling the program\n");
		for (;;) {
			struct timespec t = {0, 50 * 1000000};
			nanosleep(&t, NULL);
			if (interrupted)
				return 0;
		}
	}
	if (attach_delay > 0) {
		struct timespec t = {attach_delay / 1000, (attach_delay % 1000) * 1000000};
		while (nanosleep(&t, &t) != 0 && !interrupted)
			;
	}
	char attached[64];
	snprintf(attached, sizeof attached, "Attaching %d probe%s...\n", attach, attach == 1 ? "" : "s");
	say(1, attached);
	static const char bytes[] = "\xff\xfe binary \x80\x01 text\n";
	if (binary)
		write_all(1, bytes, sizeof bytes - 1);
	if (flood_err)
		say(1, "printing warnings\n");
	long long started = now_ms(), printed = started;
	char flood_line[] = "flood line of printf output, as a hot probe prints it 0123456789\n";
	while (!interrupted) {
		if (exit_after >= 0 && now_ms() - started >= exit_after)
			break;
		if (flood)
			write_all(1, flood_line, sizeof flood_line - 1);
		if (flood_err)
			write_all(2, "WARNING: a warning, as fast as it can be printed\n", 49);
		if (every > 0 && now_ms() - printed >= every) {
			printed = now_ms();
			say(1, "a line printed now and then\n");
		}
		if (!flood && !flood_err)
			poll(NULL, 0, every > 0 ? 1 : (int)idle);
	}
	if (exit_delay > 0) {
		struct timespec t = {exit_delay / 1000, (exit_delay % 1000) * 1000000};
		while (nanosleep(&t, &t) != 0)
			;
	}
	for (long long n = 0; n < flood_after_stop; n += (long long)sizeof flood_line - 1)
		write_all(1, flood_line, sizeof flood_line - 1);
	say(1, "\n\n");
	say(1, maps);
	say(1, "\n");
	return code;
}
