// A libuv program linked with the distribution's libuv.so, as a native service would be: it
// makes its upstream handles in its first moments (before the loader could have been watched
// mapping libuv), opens their connections a tick of its event loop later, from a timer, and
// keeps them. Usage: uv_client PORT COUNT
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <uv.h>

#define MAX_UPSTREAMS 64

static uv_tcp_t handles[MAX_UPSTREAMS];
static uv_connect_t requests[MAX_UPSTREAMS];
static struct sockaddr_in upstream;
static int count;

static void on_connect(uv_connect_t *request, int status) {
    (void)request;
    (void)status;
}

static void connect_upstreams(uv_timer_t *timer) {
    (void)timer;
    for (int i = 0; i < count; i++)
        uv_tcp_connect(&requests[i], &handles[i], (const struct sockaddr *)&upstream, on_connect);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: uv_client PORT COUNT\n");
        return 2;
    }
    count = atoi(argv[2]);
    if (count < 1 || count > MAX_UPSTREAMS)
        return 2;
    uv_loop_t *loop = uv_default_loop();
    uv_ip4_addr("127.0.0.1", atoi(argv[1]), &upstream);
    // The handles first: their stacks are where the sockets were asked for.
    for (int i = 0; i < count; i++)
        uv_tcp_init(loop, &handles[i]);
    uv_timer_t timer;
    uv_timer_init(loop, &timer);
    uv_timer_start(&timer, connect_upstreams, 300, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    // Nothing reads them: the loop has nothing left to wait for, the connections stay open.
    pause();
    return 0;
}
