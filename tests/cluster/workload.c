/* The test workload: a container's main process doing one known system call at a known rate,
 * getppid() 100 times a second, until it is stopped. Built static into an image from scratch by
 * tests/cluster/up. */
#include <signal.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t done;
static void stop(int sig) { (void)sig; done = 1; }

int main(void) {
	signal(SIGTERM, stop);
	signal(SIGINT, stop);
	struct timespec tick = {0, 10 * 1000 * 1000};
	while (!done) {
		getppid();
		nanosleep(&tick, NULL);
	}
	return 0;
}
