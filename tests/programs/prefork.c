/* A prefork server's shape, for the stack tests: waits for "go" on stdin, forks WORKERS
 * workers (never exec'd) that each open N UDP sockets and keep them, prints "ok PID..." with
 * the workers' pids once all have, then holds until stdin closes (the workers die with it).
 * Usage: prefork WORKERS N. */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static NOINLINE void open_worker_sockets(int n) {
    for (int i = 0; i < n; i++) {
        if (socket(AF_INET, SOCK_DGRAM, 0) < 0) { /* WORKER LEAK SITE */
            perror("open_worker_sockets");
            exit(1);
        }
    }
}

static NOINLINE pid_t start_worker(int n, int ready) {
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    open_worker_sockets(n);
    if (write(ready, "x", 1) != 1)
        exit(1);
    for (;;)
        pause();
}

int main(int argc, char **argv) {
    char line[64];
    int workers = argc > 1 ? atoi(argv[1]) : 2;
    int n = argc > 2 ? atoi(argv[2]) : 3;
    int ready[2];
    if (!fgets(line, sizeof line, stdin) || pipe(ready))
        return 1;
    pid_t pids[16];
    for (int w = 0; w < workers && w < 16; w++)
        pids[w] = start_worker(n, ready[1]);
    for (int w = 0; w < workers && w < 16; w++) {
        char x;
        if (read(ready[0], &x, 1) != 1)
            return 1;
    }
    printf("ok");
    for (int w = 0; w < workers && w < 16; w++)
        printf(" %d", (int)pids[w]);
    printf("\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
    }
    return 0;
}
