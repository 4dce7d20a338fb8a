/* A small service for the user-space tests. For each number N it reads (one a line) it calls
 * work() N times, each sleeping WORK_MS and firing the USDT probes tracejob:work and
 * tracejob:guarded (which has a semaphore) with the call's sequence number, then prints
 * "done TOTAL" (every call so far); for "sMS" it burns the CPU in spin() for MS milliseconds.
 * It reads stdin, and exits at its end; or, given a path, a FIFO it makes there, and runs until
 * killed (a container's service, driven through its file system from the node). Built static,
 * so a private root needs nothing else; with frame pointers, so user stacks can be walked. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
/* tracejob:guarded has a semaphore: it fires only while a tracer has set it. */
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>

#define WORK_MS 18

static long calls;
/* With _SDT_HAS_SEMAPHORES every probe names one; only guarded's is looked at. */
unsigned short tracejob_work_semaphore __attribute__((unused, section(".probes")));
unsigned short tracejob_guarded_semaphore __attribute__((unused, section(".probes")));

/* noinline: the uprobe and the stack need a real function of this name. */
__attribute__((noinline)) void work(long n)
{
    struct timespec t = {0, WORK_MS * 1000000L};
    DTRACE_PROBE1(tracejob, work, n);
    if (tracejob_guarded_semaphore)
        DTRACE_PROBE1(tracejob, guarded, n);
    nanosleep(&t, NULL);
    __asm__ volatile("" ::: "memory");
}

/* Burns the CPU for ms milliseconds: what a profile of the container sees. */
__attribute__((noinline)) static void spin(long ms)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        for (volatile int i = 0; i < 10000; i++)
            ;
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < ms);
}

__attribute__((noinline)) static void serve(FILE *in)
{
    char line[64];
    while (fgets(line, sizeof line, in)) {
        if (line[0] == 's') {
            spin(strtol(line + 1, NULL, 10));
            printf("spun\n");
            continue;
        }
        long n = strtol(line, NULL, 10);
        for (long i = 0; i < n; i++)
            work(++calls);
        printf("done %ld\n", calls);
    }
}

int main(int argc, char **argv)
{
    FILE *in = stdin;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1) {
        /* Read and write: a writer that comes and goes never makes it see the end. */
        mkfifo(argv[1], 0600);
        in = fopen(argv[1], "r+");
        if (!in) {
            perror(argv[1]);
            return 1;
        }
    }
    printf("ready\n");
    serve(in);
    return 0;
}
