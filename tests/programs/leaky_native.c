/* A native program with named functions that leak connections and UDP sockets, for the
 * stack tests. Built by the test with frame pointers and debug info, as a service built for
 * profiling is. Usage: leaky_native N [U]. Waits for "go" on stdin, starts a server, opens N
 * connections to it and U UDP sockets (none by default) and never closes them, prints
 * "ok PORT", then holds everything until stdin closes. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static NOINLINE int start_server(struct sockaddr_in *addr) {
    socklen_t len = sizeof *addr;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)addr, sizeof *addr) || listen(fd, 128) ||
        getsockname(fd, (struct sockaddr *)addr, &len)) {
        perror("start_server");
        exit(1);
    }
    return fd;
}

static NOINLINE void open_and_forget_connections(const struct sockaddr_in *server, int n) {
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0); /* LEAK SITE */
        if (fd < 0 || connect(fd, (const struct sockaddr *)server, sizeof *server)) {
            perror("open_and_forget_connections");
            exit(1);
        }
        /* fd is dropped here: the leak. */
    }
}

static NOINLINE void open_and_forget_udp_sockets(int n) {
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_DGRAM, 0); /* UDP LEAK SITE */
        if (fd < 0 || bind(fd, (const struct sockaddr *)&any, sizeof any)) {
            perror("open_and_forget_udp_sockets");
            exit(1);
        }
    }
}

int main(int argc, char **argv) {
    char line[64];
    int n = argc > 1 ? atoi(argv[1]) : 10;
    int udp = argc > 2 ? atoi(argv[2]) : 0;
    struct sockaddr_in server;
    if (!fgets(line, sizeof line, stdin))
        return 1;
    int listener = start_server(&server);
    open_and_forget_connections(&server, n);
    open_and_forget_udp_sockets(udp);
    printf("ok %d\n", ntohs(server.sin_port));
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
    }
    close(listener);
    return 0;
}
