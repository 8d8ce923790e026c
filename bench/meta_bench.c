/*
 * meta_bench: metadata and small-file rates on a mounted file system, for bench/compare.sh.
 *
 *   meta_bench [-p PROCS] [-n FILES] [-d DIRS] [-s BYTES] DIR PHASE...
 *
 * FILES files in all are split among PROCS forked processes (file i belongs to process
 * i % PROCS). With -d 0 (the default) every file is in DIR itself ("flat"); with -d N, file i is in
 * DIR/dNNN with NNN = i % N. The phases run in the order given, each started at once in every
 * process (a barrier between phases) and timed from that start until the last process is done:
 *
 *   mkdirs   create the N directories (with -d N; nothing otherwise)
 *   create   open(O_CREAT|O_EXCL) + close  of fI          (empty files)
 *   write    open(O_CREAT|O_TRUNC) + write BYTES + close  of fI
 *   stat     stat fI
 *   read     open + read to the end + close of fI (checks the length is BYTES)
 *   rename   rename fI -> rI (same directory)
 *   unlink   unlink rI
 *   rm       unlink fI
 *   rmdirs   remove the directories
 *
 * One line per phase on stdout:  PHASE OPS SECONDS OPS_PER_S ERRORS
 * (the first error of each phase and process is also described on stderr). Exit 1 if any
 * operation failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum phase { P_MKDIRS, P_CREATE, P_WRITE, P_STAT, P_READ, P_RENAME, P_UNLINK, P_RM, P_RMDIRS };
static const char *names[] = {"mkdirs", "create", "write", "stat", "read",
                              "rename", "unlink", "rm",    "rmdirs"};
#define NPHASES (sizeof(names) / sizeof(names[0]))

static const char *root;
static long nfiles = 10000, nprocs = 1, ndirs = 0, fsize = 65536;
static char *buf;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void path_of(char *out, size_t cap, char prefix, long i) {
    if (ndirs > 0)
        snprintf(out, cap, "%s/d%03ld/%c%ld", root, i % ndirs, prefix, i);
    else
        snprintf(out, cap, "%s/%c%ld", root, prefix, i);
}

static void fail(long *errs, const char *what, const char *path) {
    if ((*errs)++ == 0) fprintf(stderr, "meta_bench: %s %s: %s\n", what, path, strerror(errno));
}

/* Runs one phase for process p; returns the number of operations that failed. */
static long run_phase(enum phase ph, long p) {
    char a[4096], b[4096];
    long errs = 0;
    if (ph == P_MKDIRS || ph == P_RMDIRS) {
        for (long d = p; d < ndirs; d += nprocs) {
            snprintf(a, sizeof a, "%s/d%03ld", root, d);
            if ((ph == P_MKDIRS ? mkdir(a, 0755) : rmdir(a)) != 0) fail(&errs, names[ph], a);
        }
        return errs;
    }
    for (long i = p; i < nfiles; i += nprocs) {
        int fd;
        struct stat st;
        switch (ph) {
        case P_CREATE:
            path_of(a, sizeof a, 'f', i);
            fd = open(a, O_CREAT | O_EXCL | O_WRONLY, 0644);
            if (fd < 0 || close(fd) != 0) fail(&errs, "create", a);
            break;
        case P_WRITE: {
            path_of(a, sizeof a, 'f', i);
            fd = open(a, O_CREAT | O_TRUNC | O_WRONLY, 0644);
            if (fd < 0) { fail(&errs, "open", a); break; }
            long left = fsize;
            while (left > 0) {
                ssize_t n = write(fd, buf, left > (1 << 20) ? (1 << 20) : left);
                if (n <= 0) { fail(&errs, "write", a); break; }
                left -= n;
            }
            if (close(fd) != 0) fail(&errs, "close", a);
            break;
        }
        case P_STAT:
            path_of(a, sizeof a, 'f', i);
            if (stat(a, &st) != 0) fail(&errs, "stat", a);
            break;
        case P_READ: {
            path_of(a, sizeof a, 'f', i);
            fd = open(a, O_RDONLY);
            if (fd < 0) { fail(&errs, "open", a); break; }
            long got = 0;
            ssize_t n;
            while ((n = read(fd, buf, 1 << 20)) > 0) got += n;
            if (n < 0) fail(&errs, "read", a);
            else if (got != fsize) { errno = EIO; fail(&errs, "short read", a); }
            close(fd);
            break;
        }
        case P_RENAME:
            path_of(a, sizeof a, 'f', i);
            path_of(b, sizeof b, 'r', i);
            if (rename(a, b) != 0) fail(&errs, "rename", a);
            break;
        case P_UNLINK:
            path_of(a, sizeof a, 'r', i);
            if (unlink(a) != 0) fail(&errs, "unlink", a);
            break;
        case P_RM:
            path_of(a, sizeof a, 'f', i);
            if (unlink(a) != 0) fail(&errs, "unlink", a);
            break;
        default:
            break;
        }
    }
    return errs;
}

static void xread(int fd, char *c, size_t n) {
    while (n > 0) {
        ssize_t r = read(fd, c, n);
        if (r <= 0) { perror("meta_bench: pipe"); exit(2); }
        c += r; n -= r;
    }
}

static void xwrite(int fd, const char *c, size_t n) {
    while (n > 0) {
        ssize_t r = write(fd, c, n);
        if (r <= 0) { perror("meta_bench: pipe"); exit(2); }
        c += r; n -= r;
    }
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "p:n:d:s:")) != -1) {
        switch (opt) {
        case 'p': nprocs = atol(optarg); break;
        case 'n': nfiles = atol(optarg); break;
        case 'd': ndirs = atol(optarg); break;
        case 's': fsize = atol(optarg); break;
        default: goto usage;
        }
    }
    if (optind + 2 > argc || nprocs < 1 || nfiles < 1 || ndirs < 0 || fsize < 0) goto usage;
    root = argv[optind];
    int nph = argc - optind - 1;
    enum phase *phases = calloc(nph, sizeof *phases);
    for (int k = 0; k < nph; k++) {
        unsigned j;
        for (j = 0; j < NPHASES && strcmp(argv[optind + 1 + k], names[j]) != 0; j++) {}
        if (j == NPHASES) { fprintf(stderr, "meta_bench: unknown phase %s\n", argv[optind + 1 + k]); goto usage; }
        phases[k] = (enum phase)j;
    }
    buf = malloc(1 << 20);
    for (int i = 0; i < (1 << 20); i++) buf[i] = (char)(i * 131 + 7);

    /* errors[k * nprocs + p], shared with the children */
    long *errors = mmap(NULL, sizeof(long) * nph * nprocs, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (errors == MAP_FAILED) { perror("mmap"); return 2; }
    /* one "go" pipe per process (a shared one would let a fast process take the token of a
     * slow one and start the next phase early); one shared "done" pipe */
    int (*go)[2] = calloc(nprocs, sizeof *go), done[2];
    if (pipe(done)) { perror("pipe"); return 2; }
    for (long p = 0; p < nprocs; p++)
        if (pipe(go[p])) { perror("pipe"); return 2; }
    fflush(stdout);
    for (long p = 0; p < nprocs; p++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 2; }
        if (pid == 0) {
            close(done[0]);
            char c;
            for (int k = 0; k < nph; k++) {
                xread(go[p][0], &c, 1);
                errors[k * nprocs + p] = run_phase(phases[k], p);
                xwrite(done[1], "x", 1);
            }
            _exit(0);
        }
    }
    close(done[1]);
    for (long p = 0; p < nprocs; p++) close(go[p][0]);
    char *tokens = malloc(nprocs);
    long total_errs = 0;
    for (int k = 0; k < nph; k++) {
        double t0 = now();
        for (long p = 0; p < nprocs; p++) xwrite(go[p][1], "g", 1);
        xread(done[0], tokens, nprocs);
        double dt = now() - t0;
        long errs = 0;
        for (long p = 0; p < nprocs; p++) errs += errors[k * nprocs + p];
        total_errs += errs;
        enum phase ph = phases[k];
        long ops = (ph == P_MKDIRS || ph == P_RMDIRS) ? ndirs : nfiles;
        printf("%s %ld %.4f %.1f %ld\n", names[ph], ops, dt, dt > 0 ? ops / dt : 0.0, errs);
        fflush(stdout);
    }
    for (long p = 0; p < nprocs; p++) wait(NULL);
    return total_errs ? 1 : 0;

usage:
    fprintf(stderr, "usage: meta_bench [-p PROCS] [-n FILES] [-d DIRS] [-s BYTES] DIR PHASE...\n"
                    "phases: mkdirs create write stat read rename unlink rm rmdirs\n");
    return 2;
}
