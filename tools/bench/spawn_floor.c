/*
 * spawn_floor: spawns and reaps a command N times, the cheapest way Linux
 * allows (posix_spawn, which is clone(CLONE_VM|CLONE_VFORK) + exec), and
 * prints one duration in microseconds per line. Used by tools/bench for the
 * floor (a), for `mcp-supervisor call` (b) and for bwrap (d).
 */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: spawn_floor N command [args...]\n");
        return 2;
    }
    int n = atoi(argv[1]);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", 1, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", 1, 0);
    for (int i = 0; i < n; i++) {
        double t0 = now_us();
        pid_t pid;
        if (posix_spawn(&pid, argv[2], &fa, NULL, argv + 2, environ) != 0) {
            perror("posix_spawn");
            return 1;
        }
        int st;
        waitpid(pid, &st, 0);
        double t1 = now_us();
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "command failed: status %d\n", st);
            return 1;
        }
        printf("%.1f\n", t1 - t0);
    }
    return 0;
}
