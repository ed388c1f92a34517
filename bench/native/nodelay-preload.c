/*
 * LD_PRELOAD shim: force TCP_NODELAY on every accepted TCP socket (used for the optional
 * "libmilter-nodelay" candidate; libmilter leaves Nagle on and stalls on its two-packet EOM answer).
 * Built by bench/setup.ts: cc -O2 -shared -fPIC -o build/nodelay-preload.so nodelay-preload.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void set_nodelay(int fd) {
  if (fd < 0) return;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return;
  if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) return;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
  static int (*real)(int, struct sockaddr *, socklen_t *);
  if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
  int c = real(fd, addr, len);
  set_nodelay(c);
  return c;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
  static int (*real)(int, struct sockaddr *, socklen_t *, int);
  if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
  int c = real(fd, addr, len, flags);
  set_nodelay(c);
  return c;
}
