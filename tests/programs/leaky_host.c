/* A native program built without frame pointers (-O2 -fomit-frame-pointer, as distributions
 * and release builds are) that leaks through a plugin of its own, for the unwinding tests.
 * Usage: leaky_host PLUGIN N U. Waits for "go" on stdin, starts a server, then serve_requests
 * loads PLUGIN with dlopen, has it open N connections to the server and U UDP sockets that
 * are never closed, unloads it 100 ms later (dlclose: the sockets stay open), prints
 * "ok PORT", and holds everything until stdin closes. */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

typedef int (*open_upstreams_fn)(const struct sockaddr_in *, int, int);

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

/* Not a tail call: the count is checked after the plugin returns. */
static NOINLINE int serve_requests(const char *plugin, const struct sockaddr_in *server, int n,
                                   int udp) {
    void *lib = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        exit(1);
    }
    open_upstreams_fn open_upstreams = (open_upstreams_fn)dlsym(lib, "open_upstreams");
    if (!open_upstreams) {
        fprintf(stderr, "dlsym: %s\n", dlerror());
        exit(1);
    }
    int opened = open_upstreams(server, n, udp); /* SERVE SITE */
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    dlclose(lib);
    if (opened != n + udp) {
        fprintf(stderr, "opened %d of %d\n", opened, n + udp);
        exit(1);
    }
    return opened;
}

int main(int argc, char **argv) {
    char line[64];
    if (argc < 4)
        return 2;
    struct sockaddr_in server;
    if (!fgets(line, sizeof line, stdin))
        return 1;
    int listener = start_server(&server);
    int opened = serve_requests(argv[1], &server, atoi(argv[2]), atoi(argv[3])); /* MAIN SITE */
    printf("ok %d %d\n", ntohs(server.sin_port), opened);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
    }
    close(listener);
    return 0;
}
