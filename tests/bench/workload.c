/* Benchmark workloads in C, so the figures measure the syscalls and not an interpreter.
 *   workload exec N | open N PATH | connect N
 * Prints the elapsed nanoseconds of the measured loop on stdout. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *acceptor(void *arg) {
    int server = *(int *)arg;
    for (;;) {
        int c = accept(server, NULL, NULL);
        if (c < 0)
            return NULL;
        close(c);
    }
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    long n = atol(argv[2]);
    long long start = 0, end = 0;
    if (!strcmp(argv[1], "exec")) {
        start = now_ns();
        for (long i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid == 0) {
                execl("/bin/true", "true", (char *)NULL);
                _exit(127);
            }
            waitpid(pid, NULL, 0);
        }
        end = now_ns();
    } else if (!strcmp(argv[1], "open")) {
        const char *path = argc > 3 ? argv[3] : "/etc/hostname";
        start = now_ns();
        for (long i = 0; i < n; i++) {
            int fd = open(path, O_RDONLY);
            if (fd >= 0)
                close(fd);
        }
        end = now_ns();
    } else if (!strcmp(argv[1], "open-distinct")) {
        /* N opens of distinct missing paths at RATE per second (defeats in-kernel folding) */
        long rate = argc > 3 ? atol(argv[3]) : 0;
        char path[64];
        start = now_ns();
        for (long i = 0; i < n; i++) {
            snprintf(path, sizeof(path), "/nonexistent/capacity/%ld", i);
            int fd = open(path, O_RDONLY);
            if (fd >= 0)
                close(fd);
            if (rate > 0 && (i % 64) == 63) {
                long long due = start + (i + 1) * 1000000000LL / rate;
                while (now_ns() < due) {
                }
            }
        }
        end = now_ns();
    } else if (!strcmp(argv[1], "connect")) {
        int server = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(addr);
        bind(server, (struct sockaddr *)&addr, sizeof(addr));
        listen(server, 4096);
        getsockname(server, (struct sockaddr *)&addr, &len);
        pthread_t thread;
        pthread_create(&thread, NULL, acceptor, &server);
        struct linger lg = {.l_onoff = 1, .l_linger = 0};  /* RST on close: no TIME_WAIT pile-up */
        start = now_ns();
        for (long i = 0; i < n; i++) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            connect(s, (struct sockaddr *)&addr, sizeof(addr));
            close(s);
        }
        end = now_ns();
    } else {
        return 2;
    }
    printf("%lld\n", end - start);
    return 0;
}
