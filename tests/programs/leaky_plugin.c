/* The plugin leaky_host loads: its two functions open connections and UDP sockets and forget
 * them. Built as leaky_host is, without frame pointers. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#define NOINLINE __attribute__((noinline))

static NOINLINE int open_upstream(const struct sockaddr_in *server, int type) {
    int fd = socket(AF_INET, type, 0); /* PLUGIN LEAK SITE */
    if (fd < 0 || connect(fd, (const struct sockaddr *)server, sizeof *server)) {
        perror("open_upstream");
        exit(1);
    }
    /* fd is dropped by the caller: the leak. */
    return fd;
}

int open_upstreams(const struct sockaddr_in *server, int n, int udp) {
    int opened = 0;
    for (int i = 0; i < n + udp; i++)
        opened += open_upstream(server, i < n ? SOCK_STREAM : SOCK_DGRAM) >= 0; /* UPSTREAMS SITE */
    return opened;
}
