// What an idle TLS 1.3 connection costs a server that is not Node: N connections accepted by one process
// with OpenSSL (ECDSA P-256, as the operator's certificates), each after its handshake and one small record
// each way, then the growth of the server's RSS per connection. With `release` 1 the context has
// SSL_MODE_RELEASE_BUFFERS (OpenSSL frees a connection's read and write buffers while they are empty).
// The floor of a feed transport outside Node's `tls` (docs/bench.md, "The control plane at scale").
//   apt-get install libssl-dev; gcc -O2 -o /tmp/tls-idle-memory bench/operator/tls-idle-memory.c -lssl -lcrypto
//   /tmp/tls-idle-memory N release(0|1)
#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static long rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long v = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmRSS:", 6)) v = atol(line + 6);
  if (f) fclose(f);
  return v;
}

static void die(const char *what) {
  fprintf(stderr, "tls-idle-memory: %s\n", what);
  ERR_print_errors_fp(stderr);
  exit(1);
}

// A self-signed ECDSA P-256 certificate for the server, valid for a day.
static void self_signed(SSL_CTX *ctx) {
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *crt = X509_new();
  if (!key || !crt) die("key generation");
  ASN1_INTEGER_set(X509_get_serialNumber(crt), 1);
  X509_gmtime_adj(X509_getm_notBefore(crt), 0);
  X509_gmtime_adj(X509_getm_notAfter(crt), 86400);
  X509_set_pubkey(crt, key);
  X509_NAME *name = X509_get_subject_name(crt);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"tls-idle-memory", -1, -1, 0);
  X509_set_issuer_name(crt, name);
  if (!X509_sign(crt, key, EVP_sha256())) die("signing");
  if (SSL_CTX_use_certificate(ctx, crt) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1) die("certificate");
  X509_free(crt);
  EVP_PKEY_free(key);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: tls-idle-memory N release(0|1)\n");
    return 2;
  }
  int n = atoi(argv[1]), release = atoi(argv[2]);
  if (n < 20) die("N must be at least 20");
  struct rlimit rl = {(rlim_t)n + 64, (rlim_t)n + 64};
  if (setrlimit(RLIMIT_NOFILE, &rl)) die("RLIMIT_NOFILE");
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof addr;
  if (bind(ls, (struct sockaddr *)&addr, sizeof addr) || listen(ls, 4096) || getsockname(ls, (struct sockaddr *)&addr, &alen))
    die("listen on 127.0.0.1");
  pid_t clients = fork();
  if (clients == 0) {  // the clients: one handshake after the other, each connection kept open
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
    for (int i = 0; i < n; i++) {
      int s = socket(AF_INET, SOCK_STREAM, 0);
      if (connect(s, (struct sockaddr *)&addr, sizeof addr)) die("connect");
      SSL *x = SSL_new(c);
      SSL_set_fd(x, s);
      char b[4];
      if (SSL_connect(x) != 1 || SSL_read(x, b, 3) != 3 || SSL_write(x, "ok\n", 3) != 3) die("client handshake");
    }
    pause();
    return 0;
  }
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_num_tickets(ctx, 0);
  if (release) SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  self_signed(ctx);
  long base = 0;
  for (int i = 0; i < n; i++) {
    int s = accept(ls, NULL, NULL);
    SSL *x = SSL_new(ctx);
    SSL_set_fd(x, s);
    char b[4];
    if (SSL_accept(x) != 1 || SSL_write(x, "hi\n", 3) != 3 || SSL_read(x, b, 3) != 3) die("server handshake");
    if (i == 9) {  // the first ten carry the one-time allocations
      malloc_trim(0);
      base = rss_kib();
    }
  }
  malloc_trim(0);
  long end = rss_kib();
  printf("%s release_buffers=%d n=%d rss %ld -> %ld KiB: %.1f KiB per idle connection\n", OpenSSL_version(OPENSSL_VERSION),
         release, n, base, end, (double)(end - base) / (n - 10));
  kill(clients, SIGKILL);
  waitpid(clients, NULL, 0);
  return 0;
}
