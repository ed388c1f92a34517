/*
 * A libmilter filter for test/integration/pipeline-upstream.test.ts: the upstream that milterd's
 * upstreamFilter proxies to, and that the test also talks to directly to compare the replies.
 * Build: gcc -O1 -o pipeline-upstream-milter pipeline-upstream-milter.c -lmilter -lpthread (libmilter-dev)
 * Run:   ./pipeline-upstream-milter SPEC   (prints "ready" once listening; "eom" when it starts to hang at
 *        end of message; "close" once per milter connection)
 *
 * Negotiates NR_HDR and SKIP when offered and asks for macros ({client_addr} {daemon_name} at CONNECT,
 * {mail_addr} at MAIL). CONNECT from host "reject.example": 554 with a '%%' in the text. RCPT
 * <reject@...>: 550 5.1.1; <multi@...>: a two-line 452. Unknown commands: 500 5.5.1. Header
 * "X-Action: hang-eom": progress, print "eom", then never answer; "X-Action: quarantine": quarantine too.
 * Otherwise at EOM: progress, insert, add (with the macros seen), change Subject, delete X-Tag, change the
 * sender (with args), delete <bob@...>, add two recipients (one with args), replace the body (70000
 * bytes, two packets), continue.
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

struct priv {
  char client_addr[64];
  char daemon_name[64];
  char mail_addr[256];
  char subject[512];
  char action[64];
  size_t body;
};

static void say(const char *line) {
  /* One write per line: libmilter runs callbacks on several threads. */
  char buf[64];
  int n = snprintf(buf, sizeof buf, "%s\n", line);
  if (write(1, buf, (size_t)n) < 0) return;
}

static void copy_macro(SMFICTX *ctx, const char *name, char *dst, size_t size) {
  const char *v = smfi_getsymval(ctx, (char *)name);
  snprintf(dst, size, "%s", v == NULL ? "-" : v);
}

static struct priv *priv_of(SMFICTX *ctx) {
  struct priv *p = smfi_getpriv(ctx);
  if (p == NULL) {
    p = calloc(1, sizeof *p);
    smfi_setpriv(ctx, p);
  }
  return p;
}

static sfsistat fi_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
                             unsigned long f3, unsigned long *pf0, unsigned long *pf1,
                             unsigned long *pf2, unsigned long *pf3) {
  (void)f2;
  (void)f3;
  *pf0 = f0 & (SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT | SMFIF_ADDRCPT_PAR |
               SMFIF_DELRCPT | SMFIF_QUARANTINE | SMFIF_CHGFROM | SMFIF_SETSYMLIST);
  *pf1 = f1 & (SMFIP_NR_HDR | SMFIP_SKIP);
  *pf2 = 0;
  *pf3 = 0;
  if ((f0 & SMFIF_SETSYMLIST) != 0) {
    smfi_setsymlist(ctx, SMFIM_CONNECT, "{client_addr} {daemon_name}");
    smfi_setsymlist(ctx, SMFIM_ENVFROM, "{mail_addr}");
  }
  return SMFIS_CONTINUE;
}

static sfsistat fi_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) {
  (void)addr;
  struct priv *p = priv_of(ctx);
  if (p == NULL) return SMFIS_TEMPFAIL;
  copy_macro(ctx, "{client_addr}", p->client_addr, sizeof p->client_addr);
  copy_macro(ctx, "{daemon_name}", p->daemon_name, sizeof p->daemon_name);
  if (strcmp(host, "reject.example") == 0) {
    smfi_setreply(ctx, "554", "5.7.1", "go away, 100%% sure");
    return SMFIS_REJECT;
  }
  return SMFIS_CONTINUE;
}

static sfsistat fi_helo(SMFICTX *ctx, char *helo) {
  (void)ctx;
  (void)helo;
  return SMFIS_CONTINUE;
}

static sfsistat fi_envfrom(SMFICTX *ctx, char **argv) {
  (void)argv;
  struct priv *p = priv_of(ctx);
  if (p == NULL) return SMFIS_TEMPFAIL;
  copy_macro(ctx, "{mail_addr}", p->mail_addr, sizeof p->mail_addr);
  p->subject[0] = '\0';
  p->action[0] = '\0';
  p->body = 0;
  return SMFIS_CONTINUE;
}

static sfsistat fi_envrcpt(SMFICTX *ctx, char **argv) {
  if (strncasecmp(argv[0], "<reject@", 8) == 0) {
    smfi_setreply(ctx, "550", "5.1.1", "No such user here");
    return SMFIS_REJECT;
  }
  if (strncasecmp(argv[0], "<multi@", 7) == 0) {
    smfi_setmlreply(ctx, "452", "4.2.1", "first line", "second line", NULL);
    return SMFIS_TEMPFAIL;
  }
  return SMFIS_CONTINUE;
}

static sfsistat fi_unknown(SMFICTX *ctx, const char *cmd) {
  (void)cmd;
  smfi_setreply(ctx, "500", "5.5.1", "unknown command");
  return SMFIS_REJECT;
}

static sfsistat fi_data(SMFICTX *ctx) {
  (void)ctx;
  return SMFIS_CONTINUE;
}

static sfsistat fi_header(SMFICTX *ctx, char *name, char *value) {
  struct priv *p = smfi_getpriv(ctx);
  if (p != NULL && strcasecmp(name, "Subject") == 0) snprintf(p->subject, sizeof p->subject, "%s", value);
  if (p != NULL && strcasecmp(name, "X-Action") == 0) snprintf(p->action, sizeof p->action, "%s", value);
  return SMFIS_NOREPLY;
}

static sfsistat fi_eoh(SMFICTX *ctx) {
  (void)ctx;
  return SMFIS_CONTINUE;
}

static sfsistat fi_body(SMFICTX *ctx, unsigned char *chunk, size_t len) {
  (void)chunk;
  struct priv *p = smfi_getpriv(ctx);
  if (p != NULL) p->body += len;
  return SMFIS_CONTINUE;
}

static sfsistat fi_eom(SMFICTX *ctx) {
  struct priv *p = smfi_getpriv(ctx);
  char subject[600], macros[600];
  static unsigned char body[70000];
  if (p == NULL) return SMFIS_TEMPFAIL;
  if (smfi_progress(ctx) != MI_SUCCESS) return SMFIS_TEMPFAIL;
  if (strcmp(p->action, "hang-eom") == 0) {
    say("eom");
    for (;;) pause();
  }
  snprintf(subject, sizeof subject, "[up] %s", p->subject);
  snprintf(macros, sizeof macros, "client_addr=%s daemon_name=%s mail_addr=%s body=%zu", p->client_addr,
           p->daemon_name, p->mail_addr, p->body);
  for (size_t i = 0; i < sizeof body; i++) body[i] = (i % 80 == 78) ? '\r' : (i % 80 == 79) ? '\n' : 'b';
  if (smfi_insheader(ctx, 0, "X-Up-Top", "top") != MI_SUCCESS ||
      smfi_addheader(ctx, "X-Up-Macros", macros) != MI_SUCCESS ||
      smfi_chgheader(ctx, "Subject", 1, subject) != MI_SUCCESS ||
      smfi_chgheader(ctx, "X-Tag", 1, NULL) != MI_SUCCESS ||
      smfi_chgfrom(ctx, "<new-sender@example.org>", "SIZE=1") != MI_SUCCESS ||
      smfi_delrcpt(ctx, "<bob@example.net>") != MI_SUCCESS ||
      smfi_addrcpt(ctx, "<added@example.net>") != MI_SUCCESS ||
      smfi_addrcpt_par(ctx, "<par@example.net>", "NOTIFY=NEVER") != MI_SUCCESS)
    return SMFIS_TEMPFAIL;
  if (strcmp(p->action, "quarantine") == 0 && smfi_quarantine(ctx, "held by upstream") != MI_SUCCESS)
    return SMFIS_TEMPFAIL;
  if (smfi_replacebody(ctx, body, sizeof body) != MI_SUCCESS) return SMFIS_TEMPFAIL;
  return SMFIS_CONTINUE;
}

static sfsistat fi_abort(SMFICTX *ctx) {
  (void)ctx;
  return SMFIS_CONTINUE;
}

static sfsistat fi_close(SMFICTX *ctx) {
  free(smfi_getpriv(ctx));
  smfi_setpriv(ctx, NULL);
  say("close");
  return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
    "pipeline-upstream-milter",
    SMFI_VERSION,
    SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT | SMFIF_ADDRCPT_PAR | SMFIF_DELRCPT |
        SMFIF_QUARANTINE | SMFIF_CHGFROM | SMFIF_SETSYMLIST,
    fi_connect,
    fi_helo,
    fi_envfrom,
    fi_envrcpt,
    fi_header,
    fi_eoh,
    fi_body,
    fi_eom,
    fi_abort,
    fi_close,
    fi_unknown,
    fi_data,
    fi_negotiate,
};

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SOCKET-SPEC\n", argv[0]);
    return 2;
  }
  if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_register(desc) == MI_FAILURE) {
    fprintf(stderr, "pipeline-upstream-milter: setup failed\n");
    return 1;
  }
  if (smfi_opensocket(1) == MI_FAILURE) {
    fprintf(stderr, "pipeline-upstream-milter: cannot open %s\n", argv[1]);
    return 1;
  }
  say("ready");
  return smfi_main() == MI_SUCCESS ? 0 : 1;
}
