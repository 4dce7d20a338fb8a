/* The pod sandbox's process: waits for a signal to end. Built static, it is a whole image. */
#include <signal.h>
#include <unistd.h>

static void end(int sig) { (void)sig; _exit(0); }

int main(void) {
  signal(SIGTERM, end);
  signal(SIGINT, end);
  for (;;) pause();
}
