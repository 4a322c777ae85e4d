/*
 * epoll-c: the lean baseline peer. A plain C epoll server speaking the HELLO/WELCOME,
 * PING/PONG and ECHO part of c2m's protocol v1 (same frames, same ERROR codes as c2m serve).
 *
 *   gcc -O2 -pthread -o epoll-c server.c
 *   ./epoll-c --listen 127.0.0.1:7700 [--workers N]     (N threads, default: the cores)
 *   ./epoll-c 127.0.0.1 7700                             (older form: one thread)
 *
 * One thread per core, each with its own SO_REUSEPORT listener and level-triggered epoll set.
 * Per connection a malloc'd struct of 56 bytes; a read goes into the thread's fixed buffer and
 * is answered from there. Only a frame split across reads, or replies the socket would not take
 * at once, get a buffer of their own, freed as soon as it is empty. Several processes may share
 * the port (one process holds at most RLIMIT_NOFILE sockets).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
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

#define HEADER 4
#define MAX_FRAME 4096 /* c2m serve's default --max-frame */
#define HEARTBEAT_MS 30000
#define READ_SIZE 65536
#define LAST_WORDS_SECS 5

enum { HELLO = 0x01, WELCOME = 0x81, PING = 0x02, PONG = 0x82, ECHO = 0x03, ECHO_REPLY = 0x83,
       SEND = 0x04, ACK = 0x84, DELIVER = 0x85, RECEIPT = 0x05, RECEIPT_NOTICE = 0x86,
       NACK = 0x87, BYE = 0x06, ERROR = 0xFF };
enum { MALFORMED = 1, FRAME_SIZE = 2, UNKNOWN_KIND = 3, NOT_LOGGED_IN = 4 };
enum { OPEN, CLOSING /* flush, then FIN */, DRAINING /* FIN sent, read until EOF */ };

struct conn {
    int fd;
    uint8_t state, logged_in;
    uint16_t in_len;       /* bytes of a partial frame in `in` */
    uint8_t *in;           /* MAX_FRAME bytes while a frame is split across reads, else NULL */
    uint8_t *out;          /* replies the socket did not take yet, else NULL */
    uint32_t out_len, out_sent;
    uint64_t session_id;
    struct conn *next_draining;
    time_t deadline;       /* DRAINING: close at this time even if the client stays */
};

struct worker {
    int id, listener, ep, core;
    uint64_t next_session;
    struct conn *draining;
    uint8_t rbuf[MAX_FRAME + READ_SIZE]; /* room before the read for a partial frame */
    uint8_t wbuf[2 * (MAX_FRAME + READ_SIZE)]; /* replies: at most 6/5 of their input + one ERROR */
};

static void put_u16(uint8_t *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put_u32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = v >> (8 * i); }
static void put_u64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = v >> (8 * i); }

/* Payload bounds per kind; 0 for a kind protocol v1 does not have. */
static int bounds(uint8_t kind, size_t *min, size_t *max) {
    switch (kind) {
    case HELLO: case PING: case PONG: case RECEIPT: case RECEIPT_NOTICE: *min = *max = 16; return 1;
    case WELCOME: *min = *max = 20; return 1;
    case ECHO: case ECHO_REPLY: *min = 0; *max = MAX_FRAME; return 1;
    case SEND: case DELIVER: *min = 24; *max = MAX_FRAME; return 1;
    case ACK: *min = *max = 8; return 1;
    case NACK: *min = *max = 10; return 1;
    case BYE: *min = *max = 0; return 1;
    case ERROR: *min = 2; *max = MAX_FRAME; return 1;
    default: return 0;
    }
}

static int client_kind(uint8_t kind) {
    return kind == HELLO || kind == PING || kind == ECHO || kind == SEND || kind == RECEIPT || kind == BYE;
}

/* Appends ERROR `code` with c2m's text; the connection closes after it. */
static size_t put_error(uint8_t *out, int code) {
    static const char *text[] = {"", "malformed", "frame_size", "unknown_kind", "not_logged_in"};
    size_t n = strlen(text[code]);
    put_u16(out, HEADER + 2 + n); out[2] = ERROR; out[3] = 0;
    put_u16(out + 4, code);
    memcpy(out + 6, text[code], n);
    return HEADER + 2 + n;
}

/*
 * Handles the whole frames at the start of in[0..len), in c2m serve's order of rules, writing
 * replies to out. Sets *used to the bytes consumed (a partial frame stays) and returns the
 * reply bytes; *close is set on ERROR or BYE. A bad header is refused as soon as its bytes are
 * there, as c2m does.
 */
static size_t on_bytes(struct conn *c, const uint8_t *in, size_t len, uint8_t *out, size_t *used, int *close) {
    size_t at = 0, o = 0, min, max;
    *close = 0;
    while (len - at >= 2) {
        const uint8_t *f = in + at;
        size_t flen = f[0] | f[1] << 8;
        if (flen < HEADER || flen > MAX_FRAME) { o += put_error(out + o, FRAME_SIZE); goto fatal; }
        if (len - at < 3) break;
        uint8_t kind = f[2];
        if (!bounds(kind, &min, &max)) { o += put_error(out + o, UNKNOWN_KIND); goto fatal; }
        if (len - at < 4) break;
        if (f[3] != 0) { o += put_error(out + o, MALFORMED); goto fatal; }
        if (len - at < flen) break;
        size_t plen = flen - HEADER;
        if (plen < min || plen > max) { o += put_error(out + o, MALFORMED); goto fatal; }
        at += flen;
        if (kind == HELLO) {
            if (c->logged_in) { o += put_error(out + o, MALFORMED); goto fatal; }
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            put_u16(out + o, HEADER + 20); out[o + 2] = WELCOME; out[o + 3] = 0;
            put_u64(out + o + 4, c->session_id);
            put_u64(out + o + 12, (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec);
            put_u32(out + o + 20, HEARTBEAT_MS);
            o += HEADER + 20;
            c->logged_in = 1;
        } else if (!client_kind(kind)) {
            o += put_error(out + o, UNKNOWN_KIND); goto fatal;
        } else if (!c->logged_in) {
            o += put_error(out + o, NOT_LOGGED_IN); goto fatal;
        } else if (kind == PING || kind == ECHO) { /* the payload comes back unchanged */
            memcpy(out + o, f, flen);
            out[o + 2] = kind | 0x80;
            o += flen;
        } else if (kind == SEND) { /* no routing, as in c2m serve: NACK 7 unknown recipient */
            put_u16(out + o, HEADER + 10); out[o + 2] = NACK; out[o + 3] = 0;
            memcpy(out + o + 4, f + HEADER + 8, 8);
            put_u16(out + o + 12, 7);
            o += HEADER + 10;
        } else if (kind == BYE) {
            goto fatal;
        } /* RECEIPT: nothing to route */
    }
    *used = at;
    return o;
fatal:
    *used = len;
    *close = 1;
    return o;
}

static void drop_conn(struct worker *w, struct conn *c) {
    epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    if (c->state == DRAINING) c->fd = -1; /* freed by the draining sweep */
    else free(c);
}

static void watch(struct worker *w, struct conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* After ERROR or BYE, with nothing left to send: FIN, then read and drop input until the client
 * closes (at most LAST_WORDS_SECS), so the close never meets unread data and turns into a RST
 * that could destroy the ERROR in flight. c2m serve does the same. */
static void say_last_words(struct worker *w, struct conn *c) {
    shutdown(c->fd, SHUT_WR);
    c->state = DRAINING;
    free(c->in);
    c->in = NULL;
    c->in_len = 0;
    c->deadline = time(NULL) + LAST_WORDS_SECS;
    c->next_draining = w->draining;
    w->draining = c;
    watch(w, c, EPOLLIN | EPOLLRDHUP);
}

/* Closes draining connections whose client left or whose time is up. */
static void sweep_draining(struct worker *w) {
    time_t now = time(NULL);
    struct conn **p = &w->draining;
    while (*p) {
        struct conn *c = *p;
        if (c->fd >= 0 && c->deadline > now) { p = &c->next_draining; continue; }
        *p = c->next_draining;
        if (c->fd >= 0) { epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); }
        free(c);
    }
}

/* Sends out[0..n); keeps what the socket did not take and waits for EPOLLOUT instead of
 * reading more (backpressure). Returns -1 if the connection is gone. */
static int send_or_keep(struct worker *w, struct conn *c, const uint8_t *out, size_t n) {
    ssize_t sent = send(c->fd, out, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        sent = 0;
    }
    if ((size_t)sent == n) return 0;
    c->out_len = n - sent;
    c->out_sent = 0;
    c->out = malloc(c->out_len);
    if (!c->out) return -1;
    memcpy(c->out, out + sent, c->out_len);
    watch(w, c, EPOLLOUT);
    return 0;
}

static void on_readable(struct worker *w, struct conn *c) {
    uint8_t *read_at = w->rbuf + MAX_FRAME;
    ssize_t got = read(c->fd, read_at, READ_SIZE);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (got <= 0) { drop_conn(w, c); return; }
    if (c->state == DRAINING) return; /* input after our last words is dropped */
    /* A partial frame goes right before the new bytes, so frames are parsed in place. */
    uint8_t *start = read_at - c->in_len;
    if (c->in_len) memcpy(start, c->in, c->in_len);
    size_t len = c->in_len + (size_t)got, used;
    int close_after;
    size_t n = on_bytes(c, start, len, w->wbuf, &used, &close_after);
    size_t left = len - used;
    if (left) {
        if (!c->in && !(c->in = malloc(MAX_FRAME))) { drop_conn(w, c); return; }
        memmove(c->in, start + used, left);
    } else if (c->in) {
        free(c->in);
        c->in = NULL;
    }
    c->in_len = left;
    if (close_after) c->state = CLOSING;
    if (n && send_or_keep(w, c, w->wbuf, n) < 0) { drop_conn(w, c); return; }
    if (c->state == CLOSING && !c->out) say_last_words(w, c);
}

static void on_writable(struct worker *w, struct conn *c) {
    ssize_t sent = send(c->fd, c->out + c->out_sent, c->out_len - c->out_sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (sent <= 0) { drop_conn(w, c); return; }
    c->out_sent += sent;
    if (c->out_sent < c->out_len) return;
    free(c->out);
    c->out = NULL;
    if (c->state == CLOSING) say_last_words(w, c);
    else watch(w, c, EPOLLIN | EPOLLRDHUP);
}

static void on_accept(struct worker *w) {
    for (int i = 0; i < 256; i++) { /* bounded, so a connect storm does not starve the others */
        int fd = accept4(w->listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                perror("epoll-c: accept");
                usleep(10000); /* back off instead of spinning on the same error */
            }
            return;
        }
        struct conn *c = calloc(1, sizeof *c);
        if (!c) { close(fd); continue; }
        c->fd = fd;
        c->session_id = (uint64_t)w->id << 48 | ++w->next_session;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) < 0) { close(fd); free(c); }
    }
}

static void *run_worker(void *arg) {
    struct worker *w = arg;
    if (w->core >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(w->core, &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    }
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(w->ep, events, 256, w->draining ? 1000 : -1);
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL) { on_accept(w); continue; }
            struct conn *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            if (!c->out) on_readable(w, c); /* EPOLLIN, EPOLLRDHUP, EPOLLHUP, EPOLLERR: read tells */
            else if (events[i].events & (EPOLLERR | EPOLLHUP)) drop_conn(w, c);
            else on_writable(w, c); /* input waits until the replies are out */
        }
        if (w->draining) sweep_draining(w);
    }
    return NULL;
}

static int parse_addr(const char *text, struct sockaddr_storage *ss, socklen_t *len) {
    char host[64];
    const char *colon = strrchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof host) return -1;
    memcpy(host, text, colon - text);
    host[colon - text] = 0;
    int port = atoi(colon + 1);
    char *h = host;
    if (h[0] == '[') { h++; h[strlen(h) - 1] = 0; }
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof *ss);
    if (inet_pton(AF_INET, h, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET; v4->sin_port = htons(port); *len = sizeof *v4; return 0;
    }
    if (inet_pton(AF_INET6, h, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6; v6->sin6_port = htons(port); *len = sizeof *v6; return 0;
    }
    return -1;
}

/* SO_REUSEPORT, so the workers and other processes share the port; backlog 4096. */
static int listen_on(struct sockaddr_storage *ss, socklen_t len) {
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    /* Accepted sockets inherit it: replies are small and must not wait for Nagle. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)ss, len) < 0 || listen(fd, 4096) < 0) { close(fd); return -1; }
    return fd;
}

static void usage(const char *me) {
    fprintf(stderr, "usage: %s --listen IP:PORT [--workers N]\n       %s ADDR PORT\n", me, me);
    exit(2);
}

int main(int argc, char **argv) {
    const char *listen_arg = NULL;
    char legacy[80];
    int workers = 0;
    if (argc == 3 && argv[1][0] != '-') { /* the older form, kept for bench/idle_memory.rs */
        snprintf(legacy, sizeof legacy, strchr(argv[1], ':') ? "[%s]:%s" : "%s:%s", argv[1], argv[2]);
        listen_arg = legacy;
        workers = 1;
    } else {
        for (int i = 1; i < argc; i++) {
            const char *a = argv[i], *eq = strchr(a, '=');
            size_t flag_len = eq ? (size_t)(eq - a) : strlen(a);
            const char *value = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
            if (!value) usage(argv[0]);
            if (flag_len == 8 && !strncmp(a, "--listen", 8)) listen_arg = value;
            else if (flag_len == 9 && !strncmp(a, "--workers", 9)) workers = atoi(value);
            else usage(argv[0]);
        }
    }
    if (!listen_arg) usage(argv[0]);
    struct sockaddr_storage ss;
    socklen_t ss_len;
    if (parse_addr(listen_arg, &ss, &ss_len) < 0) { fprintf(stderr, "epoll-c: bad address %s\n", listen_arg); return 2; }

    cpu_set_t allowed;
    int cores[CPU_SETSIZE], ncores = 0;
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0)
        for (int i = 0; i < CPU_SETSIZE; i++) if (CPU_ISSET(i, &allowed)) cores[ncores++] = i;
    if (workers <= 0) workers = ncores > 0 ? ncores : 1;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* SIGTERM and SIGINT are taken by this thread alone (sigwait below); workers inherit the mask. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct worker **ws = calloc(workers, sizeof *ws);
    for (int i = 0; i < workers; i++) {
        struct worker *w = ws[i] = calloc(1, sizeof *w);
        if (!w) { perror("epoll-c: calloc"); return 1; }
        w->id = i;
        w->core = workers > 1 && ncores > 0 ? cores[i % ncores] : -1;
        if ((w->listener = listen_on(&ss, ss_len)) < 0) { perror("epoll-c: bind/listen"); return 1; }
        if (i == 0) getsockname(w->listener, (struct sockaddr *)&ss, &ss_len); /* port 0: one port for all */
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(w->ep, EPOLL_CTL_ADD, w->listener, &ev);
    }
    for (int i = 0; i < workers; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, run_worker, ws[i]) != 0) { perror("epoll-c: pthread_create"); return 1; }
    }
    char host[INET6_ADDRSTRLEN];
    int port;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
        port = ntohs(v4->sin_port);
        printf("READY %s:%d\n", host, port);
    } else {
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
        port = ntohs(v6->sin6_port);
        printf("READY [%s]:%d\n", host, port);
    }
    fflush(stdout);
    int sig;
    sigwait(&stop, &sig);
    return 0;
}
