/* The test harness's container runtime, as small as it gets: `contain CGROUP ROOT PROGRAM ARGS...`
 * moves itself into the cgroup directory CGROUP (before anything forks), then runs PROGRAM in a
 * mount namespace of its own whose root is ROOT (pivot_root, as runc does, so the
 * node sees the container's files only through /proc/PID/root). It stays as the container's
 * parent: it forks, then waits for the container's process and exits as it did, so the
 * container's main process is the child, as under a runtime's shim. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void fail(const char *what)
{
    perror(what);
    exit(127);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: contain CGROUP ROOT PROGRAM ARGS...\n");
        return 2;
    }
    char procs[4096];
    snprintf(procs, sizeof procs, "%s/cgroup.procs", argv[1]);
    FILE *f = fopen(procs, "w");
    if (!f || fprintf(f, "0\n") < 0 || fclose(f))
        fail(procs);
    argv++;
    if (unshare(CLONE_NEWNS))
        fail("unshare");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
        fail("mount --make-rprivate /");
    if (mount(argv[1], argv[1], NULL, MS_BIND | MS_REC, NULL))
        fail("bind-mount the root");
    if (chdir(argv[1]))
        fail("chdir");
    mkdir(".old-root", 0700);
    if (syscall(SYS_pivot_root, ".", ".old-root"))
        fail("pivot_root");
    if (umount2("/.old-root", MNT_DETACH))
        fail("umount the old root");
    rmdir("/.old-root");
    if (chdir("/"))
        fail("chdir /");
    pid_t child = fork();
    if (child < 0)
        fail("fork");
    if (child == 0) {
        execv(argv[2], argv + 2);
        fail(argv[2]);
    }
    int status;
    if (waitpid(child, &status, 0) < 0)
        fail("waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
