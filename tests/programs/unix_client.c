// A native client that leaks UNIX stream connections to a path, driven by lines on stdin, each
// answered "ok" (the test suite's scenario protocol):
//   connect PATH N    open N connections to PATH from leak_unix_connections, keep them
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

// Kept out of main, and out of line, so that its frame names the leak.
__attribute__((noinline)) static void leak_unix_connections(const char *path, int count) {
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(address.sun_path)) {
        fprintf(stderr, "path too long: %s\n", path);
        exit(1);
    }
    strcpy(address.sun_path, path);
    for (int i = 0; i < count; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0) { // LEAK SITE
            perror("connect");
            exit(1);
        }
        // Kept open, never closed: the leak.
    }
}

int main(void) {
    char line[512], path[256];
    int count;
    while (fgets(line, sizeof(line), stdin)) {
        if (sscanf(line, "connect %255s %d", path, &count) != 2) {
            fprintf(stderr, "unknown command: %s", line);
            return 1;
        }
        leak_unix_connections(path, count);
        printf("ok\n");
        fflush(stdout);
    }
    return 0;
}
