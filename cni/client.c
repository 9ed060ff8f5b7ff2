/* moor's CNI client in C: the fast path without an interpreter starting (~1 ms instead of ~8 ms).
 *
 * It speaks cni/entry.py's exchange with moord (dataplane/cniserver.py) and relays the agent's
 * stdout and exit code byte for byte. Whenever it cannot finish a call through the agent, it hands
 * the call to the Python client (MOOR_FALLBACK, compiled in: PREFIX/bin/moor), which does the work
 * itself, with the config replayed on its stdin (a memfd) and the same argv and environment:
 *   - arguments (`moor install`), an unreadable stdin, a config whose agentSocket needs a JSON parse;
 *   - no socket, refused, the agent answering anything but P, or seeing other objects (F): nothing
 *     was done by the agent, the Python client does it all;
 *   - the agent took the call (G) and went away before answering: MOOR_AGENT_INTERRUPTED=1 tells the
 *     Python client to finish it as cni/entry.py does (an ADD undone and made again).
 * Built by cni/client.py (moor install, the bench) with the system's C compiler; without one, the
 * Python client is the plugin.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef MOOR_FALLBACK
#error "build with -DMOOR_FALLBACK='\"/opt/moor/bin/moor\"' (cni/client.py does)"
#endif

#define DEFAULT_SOCKET "/run/moor/cni.sock"
#define MAGIC "MOOR1"
#define CONNECT_TIMEOUT_S 2   /* cni/entry.py CONNECT_TIMEOUT */
#define REPLY_TIMEOUT_S 300   /* cni/entry.py REPLY_TIMEOUT */
#define MAX_STDIN (16u << 20) /* dataplane/cniserver.py MAX_STDIN: more is the Python client's */

extern char **environ;

struct buf {
    char *p;
    size_t n, cap;
};

static int put(struct buf *b, const void *data, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    return 0;
}

/* exec the Python client; stdin (when read) replayed from a memfd. Never returns. */
static void fallback(char **argv, const struct buf *in, int interrupted)
{
    if (in) {
        int fd = memfd_create("moor-stdin", 0);
        size_t off = 0;
        while (fd >= 0 && off < in->n) {
            ssize_t w = write(fd, in->p + off, in->n - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                close(fd);
                fd = -1;
                break;
            }
            off += (size_t)w;
        }
        if (fd < 0 || lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0)
            _exit(111);
        if (fd != 0)
            close(fd);
    }
    if (interrupted)
        setenv("MOOR_AGENT_INTERRUPTED", "1", 1);
    argv[0] = (char *)MOOR_FALLBACK;
    execv(MOOR_FALLBACK, argv);
    _exit(127);
}

static int read_all(int fd, struct buf *b, size_t max)
{
    char chunk[65536];
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            return 0;
        if (b->n + (size_t)r > max || put(b, chunk, (size_t)r))
            return -1;
    }
}

static int recv_exact(int s, void *dst, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(s, (char *)dst + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static int send_all(int s, const void *src, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(s, (const char *)src + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        off += (size_t)w;
    }
    return 0;
}

static const char *memfind(const char *hay, size_t n, const char *needle, size_t m)
{
    return m > n ? NULL : memmem(hay, n, needle, m);
}

/* cni/entry.py socket_path/_scan_string: 1 and the path in `out` (empty: the fast path is off),
 * or 0 when only a JSON parse can tell (the Python client decides then). */
static int socket_path(const struct buf *in, char *out, size_t outsz)
{
    static const char key[] = "\"agentSocket\"";
    const size_t klen = sizeof key - 1;
    const char *k = memfind(in->p, in->n, key, klen);
    if (!k) {
        strcpy(out, DEFAULT_SOCKET);
        return 1;
    }
    const char *end = in->p + in->n, *p = k + klen;
    if (memfind(k + 1, (size_t)(end - k - 1), key, klen))
        return 0; /* twice: JSON decides which one counts */
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    if (p >= end || *p++ != ':')
        return 0;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    if (p >= end || *p++ != '"')
        return 0;
    const char *v = p;
    while (p < end && *p != '"') {
        if (*p == '\\' || (unsigned char)*p < 0x20 || (unsigned char)*p >= 0x80)
            return 0; /* escapes and non-ASCII: JSON's to read */
        p++;
    }
    if (p >= end)
        return 0;
    size_t n = (size_t)(p - v);
    if (n == 0 || *v != '/') {
        out[0] = 0; /* "" or not absolute: off */
        return 1;
    }
    if (n >= outsz)
        return 0;
    memcpy(out, v, n);
    out[n] = 0;
    return 1;
}

/* entries: dev NUL ino NUL path NUL ...: whether each path is the same object here */
static int same_objects(char *e, size_t n)
{
    char *parts[3];
    size_t i = 0;
    int k = 0;
    while (i < n) {
        char *start = e + i;
        char *nul = memchr(start, 0, n - i);
        size_t len = nul ? (size_t)(nul - start) : n - i;
        start[len] = 0; /* the last part has no NUL: e has one spare byte */
        parts[k++] = start;
        i += len + 1;
        if (k == 3) {
            struct stat st;
            if (stat(parts[2], &st) != 0)
                return 0;
            if (strtoull(parts[0], NULL, 10) != (unsigned long long)st.st_dev ||
                strtoull(parts[1], NULL, 10) != (unsigned long long)st.st_ino)
                return 0;
            k = 0;
        }
    }
    return 1;
}

static void timeout(int s, int opt, int seconds)
{
    struct timeval tv = {.tv_sec = seconds};
    setsockopt(s, SOL_SOCKET, opt, &tv, sizeof tv);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        fallback(argv, NULL, 0); /* `moor install` and friends */
    struct stat st;
    if (fstat(0, &st) != 0)
        fallback(argv, NULL, 0); /* no stdin: the Python client answers that */
    struct buf in = {0};
    if (read_all(0, &in, (size_t)1 << 30) != 0)
        fallback(argv, NULL, 0); /* stdin unreadable: the Python client says so */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (in.n > MAX_STDIN || !socket_path(&in, path, sizeof path) || !path[0])
        fallback(argv, &in, 0);

    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        fallback(argv, &in, 0);
    timeout(s, SO_SNDTIMEO, CONNECT_TIMEOUT_S); /* a unix connect waits on the send timeout */
    timeout(s, SO_RCVTIMEO, CONNECT_TIMEOUT_S);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, path);
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0)
        fallback(argv, &in, 0);

    struct buf env = {0}, msg = {0};
    for (char **e = environ; *e; e++) {
        if (env.n && put(&env, "", 1))
            fallback(argv, &in, 0);
        if (put(&env, *e, strlen(*e)))
            fallback(argv, &in, 0);
    }
    uint32_t lens[2] = {htonl((uint32_t)env.n), htonl((uint32_t)in.n)};
    if (put(&msg, MAGIC, 5) || put(&msg, lens, 8) || put(&msg, env.p, env.n) || put(&msg, in.p, in.n) ||
        send_all(s, msg.p, msg.n))
        fallback(argv, &in, 0);
    char kind;
    uint32_t n;
    if (recv_exact(s, &kind, 1) || kind != 'P' || recv_exact(s, &n, 4))
        fallback(argv, &in, 0);
    n = ntohl(n);
    if (n > (16u << 20))
        fallback(argv, &in, 0);
    char *entries = malloc((size_t)n + 1);
    if (!entries || recv_exact(s, entries, n))
        fallback(argv, &in, 0);
    int same = same_objects(entries, n);
    if (send_all(s, same ? "G" : "F", 1) || !same)
        fallback(argv, &in, 0); /* the agent does nothing without G */

    timeout(s, SO_RCVTIMEO, REPLY_TIMEOUT_S);
    int32_t code;
    struct buf out = {0};
    if (recv_exact(s, &code, 4) || read_all(s, &out, (size_t)1 << 30) != 0)
        fallback(argv, &in, 1); /* it took the call and went away: finish it there */
    close(s);
    for (size_t off = 0; off < out.n;) {
        ssize_t w = write(1, out.p + off, out.n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* as cni/entry.py: a closed stdout does not change the exit code */
        off += (size_t)w;
    }
    return (int)(int32_t)ntohl((uint32_t)code);
}
