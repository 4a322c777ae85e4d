/*
 * epoll-c: the lean baseline peer. A plain C epoll server speaking the HELLO/WELCOME and
 * PING/PONG part of c2m's protocol v1, one thread per process; several processes share the port
 * with SO_REUSEPORT, since one process holds at most RLIMIT_NOFILE sockets.
 *
 *   cc -O2 -o epoll-c server.c && ./epoll-c 127.0.0.1 7700
 *
 * Per connection it keeps a 24-byte struct (a partial frame of at most 20 bytes), indexed by fd.
 * Anything outside that subset of the protocol closes the connection.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME 20 /* HELLO and PING are both 4 + 16 bytes */

struct conn {
    uint8_t len;
    uint8_t logged_in;
    uint8_t buf[FRAME];
};

static struct conn *conns;
static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void put_u16(uint8_t *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put_u32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = v >> (8 * i); }
static void put_u64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = v >> (8 * i); }

/* Handles one whole 20-byte frame; returns 0 to keep the connection, -1 to close it. */
static int handle(int fd, struct conn *c) {
    uint8_t out[24];
    uint16_t len = c->buf[0] | c->buf[1] << 8;
    uint8_t kind = c->buf[2], flags = c->buf[3];
    if (len != FRAME || flags != 0) return -1;
    if (kind == 0x01 && !c->logged_in) { /* HELLO -> WELCOME */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        put_u16(out, 24); out[2] = 0x81; out[3] = 0;
        put_u64(out + 4, (uint64_t)fd);
        put_u64(out + 12, (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec);
        put_u32(out + 20, 30000);
        c->logged_in = 1;
        return write(fd, out, 24) == 24 ? 0 : -1;
    }
    if (kind == 0x02 && c->logged_in) { /* PING -> PONG, same 16 bytes */
        memcpy(out, c->buf, FRAME);
        out[2] = 0x82;
        return write(fd, out, FRAME) == FRAME ? 0 : -1;
    }
    return -1;
}

static void drop(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    memset(&conns[fd], 0, sizeof conns[fd]);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s ADDR PORT\n", argv[0]); return 2; }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    conns = calloc(rl.rlim_cur, sizeof *conns);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    setsockopt(ls, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &sa.sin_addr);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 4096)) { perror("bind/listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("epoll-c: listening on %s:%s, up to %lu connections\n", argv[1], argv[2], (unsigned long)rl.rlim_cur);
    fflush(stdout);

    struct epoll_event events[256];
    while (!stop) {
        int n = epoll_wait(ep, events, 256, 200);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            struct conn *c = &conns[fd];
            uint8_t buf[4096];
            ssize_t got = read(fd, buf, sizeof buf);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                drop(ep, fd);
                continue;
            }
            int bad = 0;
            for (ssize_t at = 0; at < got && !bad;) {
                size_t room = (size_t)(FRAME - c->len), left = (size_t)(got - at);
                size_t take = room < left ? room : left;
                memcpy(c->buf + c->len, buf + at, take);
                c->len += take;
                at += take;
                if (c->len == FRAME) {
                    bad = handle(fd, c);
                    c->len = 0;
                }
            }
            if (bad) drop(ep, fd);
        }
    }
    return 0;
}
