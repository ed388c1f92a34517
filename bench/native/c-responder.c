/*
 * Minimal milter responder with pre-built replies: the ceiling of the load generator on this machine.
 * Single-threaded epoll loop. It answers OPTNEG (v6, SMFIF_ADDHDRS, no protocol flags), every command
 * that expects a reply with CONTINUE, EOM with ADDHEADER "X-Bench: milterd-bench" + CONTINUE, and stays
 * silent on MACRO and ABORT; QUIT closes. It does not look inside payloads.
 * Usage: c-responder SPEC   (inet:PORT@HOST or unix:/path)
 * Built by bench/setup.ts: cc -O2 -o build/c-responder c-responder.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_FRAME (1024 * 1024 + 8)

struct conn {
  int fd;
  unsigned char *in;
  size_t in_len, in_cap;
  unsigned char *out;
  size_t out_len, out_cap;
  int want_out;
};

static unsigned char optneg_reply[17];
static unsigned char continue_reply[5] = {0, 0, 0, 1, 'c'};
static unsigned char eom_reply[64];
static size_t eom_reply_len;

static void put32(unsigned char *p, uint32_t v) {
  p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void build_replies(void) {
  put32(optneg_reply, 13);
  optneg_reply[4] = 'O';
  put32(optneg_reply + 5, 6);
  put32(optneg_reply + 9, 0x01);
  put32(optneg_reply + 13, 0);
  const char name[] = "X-Bench", value[] = "milterd-bench";
  size_t plen = 1 + sizeof name + sizeof value;
  put32(eom_reply, (uint32_t)plen);
  eom_reply[4] = 'h';
  memcpy(eom_reply + 5, name, sizeof name);
  memcpy(eom_reply + 5 + sizeof name, value, sizeof value);
  eom_reply_len = 4 + plen;
  memcpy(eom_reply + eom_reply_len, continue_reply, 5);
  eom_reply_len += 5;
}

static void out_append(struct conn *c, const unsigned char *p, size_t n) {
  if (c->out_len + n > c->out_cap) {
    size_t cap = c->out_cap ? c->out_cap * 2 : 4096;
    while (cap < c->out_len + n) cap *= 2;
    c->out = realloc(c->out, cap);
    if (!c->out) abort();
    c->out_cap = cap;
  }
  memcpy(c->out + c->out_len, p, n);
  c->out_len += n;
}

static void conn_close(int ep, struct conn *c) {
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  free(c->in);
  free(c->out);
  free(c);
}

/* Returns -1 when the connection must be closed. */
static int flush_out(int ep, struct conn *c) {
  size_t off = 0;
  while (off < c->out_len) {
    ssize_t w = write(c->fd, c->out + off, c->out_len - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return -1;
    }
    off += (size_t)w;
  }
  memmove(c->out, c->out + off, c->out_len - off);
  c->out_len -= off;
  int want = c->out_len > 0;
  if (want != c->want_out) {
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want;
  }
  return 0;
}

/* Returns -1 when the connection must be closed. */
static int handle_input(struct conn *c) {
  size_t pos = 0;
  while (c->in_len - pos >= 5) {
    uint32_t len = ((uint32_t)c->in[pos] << 24) | ((uint32_t)c->in[pos + 1] << 16) |
                   ((uint32_t)c->in[pos + 2] << 8) | c->in[pos + 3];
    if (len == 0 || len > MAX_FRAME) return -1;
    if (c->in_len - pos < 4 + (size_t)len) break;
    unsigned char cmd = c->in[pos + 4];
    pos += 4 + len;
    switch (cmd) {
      case 'O': out_append(c, optneg_reply, sizeof optneg_reply); break;
      case 'D': case 'A': break;
      case 'Q': return -1;
      case 'K': break;
      case 'E': out_append(c, eom_reply, eom_reply_len); break;
      default: out_append(c, continue_reply, sizeof continue_reply); break;
    }
  }
  memmove(c->in, c->in + pos, c->in_len - pos);
  c->in_len -= pos;
  return 0;
}

static int listen_spec(const char *spec) {
  int fd;
  if (strncmp(spec, "unix:", 5) == 0) {
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strncpy(sun.sun_path, spec + 5, sizeof sun.sun_path - 1);
    unlink(sun.sun_path);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof sun) != 0) return -1;
  } else if (strncmp(spec, "inet:", 5) == 0) {
    char host[256] = "127.0.0.1";
    int port = atoi(spec + 5);
    const char *at = strchr(spec, '@');
    if (at) { strncpy(host, at + 1, sizeof host - 1); }
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) return -1;
    fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0) return -1;
  } else {
    return -1;
  }
  if (listen(fd, 511) != 0) return -1;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: %s SPEC\n", argv[0]); return 2; }
  signal(SIGPIPE, SIG_IGN);
  build_replies();
  int lfd = listen_spec(argv[1]);
  if (lfd < 0) { perror("listen"); return 1; }
  int is_tcp = strncmp(argv[1], "inet:", 5) == 0;
  int ep = epoll_create1(0);
  struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
  printf("READY\n");
  fflush(stdout);
  struct epoll_event evs[256];
  unsigned char rbuf[65536];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 1; }
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      if (c == NULL) {
        for (;;) {
          int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
          if (cfd < 0) break;
          if (is_tcp) { int one = 1; setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); }
          struct conn *nc = calloc(1, sizeof *nc);
          nc->fd = cfd;
          struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
          epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev);
        }
        continue;
      }
      int dead = 0;
      if (evs[i].events & EPOLLIN) {
        for (;;) {
          ssize_t r = read(c->fd, rbuf, sizeof rbuf);
          if (r < 0) { if (errno == EINTR) continue; if (errno == EAGAIN) break; dead = 1; break; }
          if (r == 0) { dead = 1; break; }
          if (c->in_len + (size_t)r > c->in_cap) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 8192;
            while (cap < c->in_len + (size_t)r) cap *= 2;
            c->in = realloc(c->in, cap);
            if (!c->in) abort();
            c->in_cap = cap;
          }
          memcpy(c->in + c->in_len, rbuf, (size_t)r);
          c->in_len += (size_t)r;
          if (handle_input(c) != 0) { dead = 1; break; }
          if ((size_t)r < sizeof rbuf) break;
        }
      }
      if (!dead && (c->out_len > 0 || (evs[i].events & EPOLLOUT))) {
        if (flush_out(ep, c) != 0) dead = 1;
      }
      if (!dead && (evs[i].events & (EPOLLHUP | EPOLLERR)) && !(evs[i].events & EPOLLIN)) dead = 1;
      if (dead) conn_close(ep, c);
    }
  }
}
