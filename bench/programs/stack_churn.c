/* sockleak's bench: opens and closes UDP sockets from one code path, three calls below main,
 * as fast as it can for the seconds it is given; prints {"sockets":N,"seconds":S}. Built with
 * frame pointers and without, so that sockleak walks the stacks of the one and copies those
 * of the other. It first sets up for 100 ms, as a service does before it serves: sockleak
 * judges a program at its exec, and one whose first socket comes before that judgement is
 * copied, whatever it keeps. */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

__attribute__((noinline)) int open_socket(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd >= 0)
        close(fd);
    return fd;
}

__attribute__((noinline)) long burst(int count) {
    long opened = 0;
    for (int i = 0; i < count; i++)
        opened += open_socket() >= 0;
    return opened;
}

__attribute__((noinline)) long churn(double seconds) {
    long opened = 0;
    double end = now() + seconds;
    while (now() < end)
        opened += burst(100);
    return opened;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 3.0;
    usleep(100 * 1000);
    double start = now();
    long opened = churn(seconds);
    printf("{\"sockets\":%ld,\"seconds\":%.3f}\n", opened, now() - start);
    return opened > 0 ? 0 : 1;
}
