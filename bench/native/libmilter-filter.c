/*
 * The benchmark filter on Sendmail's libmilter: continue at every stage, add one header at EOM.
 * Usage: libmilter-filter SPEC   (inet:PORT@127.0.0.1 or unix:/path)
 * Built by bench/setup.ts: cc -O2 -o build/libmilter-filter libmilter-filter.c -lmilter -lpthread
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <libmilter/mfapi.h>

static sfsistat f_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) { (void)ctx; (void)host; (void)addr; return SMFIS_CONTINUE; }
static sfsistat f_helo(SMFICTX *ctx, char *helo) { (void)ctx; (void)helo; return SMFIS_CONTINUE; }
static sfsistat f_envfrom(SMFICTX *ctx, char **argv) { (void)ctx; (void)argv; return SMFIS_CONTINUE; }
static sfsistat f_envrcpt(SMFICTX *ctx, char **argv) { (void)ctx; (void)argv; return SMFIS_CONTINUE; }
static sfsistat f_header(SMFICTX *ctx, char *name, char *value) { (void)ctx; (void)name; (void)value; return SMFIS_CONTINUE; }
static sfsistat f_eoh(SMFICTX *ctx) { (void)ctx; return SMFIS_CONTINUE; }
static sfsistat f_body(SMFICTX *ctx, unsigned char *chunk, size_t len) { (void)ctx; (void)chunk; (void)len; return SMFIS_CONTINUE; }
static sfsistat f_eom(SMFICTX *ctx) {
  if (smfi_addheader(ctx, "X-Bench", "milterd-bench") != MI_SUCCESS) return SMFIS_TEMPFAIL;
  return SMFIS_CONTINUE;
}
static sfsistat f_abort(SMFICTX *ctx) { (void)ctx; return SMFIS_CONTINUE; }
static sfsistat f_close(SMFICTX *ctx) { (void)ctx; return SMFIS_CONTINUE; }
static sfsistat f_unknown(SMFICTX *ctx, const char *cmd) { (void)ctx; (void)cmd; return SMFIS_CONTINUE; }
static sfsistat f_data(SMFICTX *ctx) { (void)ctx; return SMFIS_CONTINUE; }

static struct smfiDesc desc = {
  "milterd-bench", SMFI_VERSION, SMFIF_ADDHDRS,
  f_connect, f_helo, f_envfrom, f_envrcpt, f_header, f_eoh, f_body, f_eom, f_abort, f_close,
  f_unknown, f_data, NULL,
};

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: %s SPEC\n", argv[0]); return 2; }
  if (smfi_setconn(argv[1]) != MI_SUCCESS) { fprintf(stderr, "smfi_setconn failed\n"); return 1; }
  smfi_setbacklog(511); /* same as Node's default listen backlog */
  if (smfi_register(desc) != MI_SUCCESS) { fprintf(stderr, "smfi_register failed\n"); return 1; }
  if (smfi_opensocket(1) != MI_SUCCESS) { fprintf(stderr, "smfi_opensocket failed\n"); return 1; }
  fprintf(stdout, "READY\n");
  fflush(stdout);
  return smfi_main() == MI_SUCCESS ? 0 : 1;
}
