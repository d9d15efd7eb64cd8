/* The `sim` device: the runtime core as a POSIX process.
 *
 *   tinybridge-sim [--tcp PORT] [--flash FILE]
 *
 * The link is stdin/stdout (a binary pipe), or with --tcp a TCP server on 127.0.0.1:PORT (0: any
 * free port) serving one client at a time and waiting for the next after a disconnect. The flash
 * is FILE (created erased if missing), else an anonymous file that lives as long as the process
 * and its resets. The runtime runs on a thread whose stack is the board's budget, painted for the
 * high-water mark. */
#define _DEFAULT_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host.h"
#include "runtime.h"

static void die(const char *what)
{
    fprintf(stderr, "tinybridge-sim: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(void)
{
    fprintf(stderr, "usage: tinybridge-sim [--tcp PORT] [--flash FILE]\n");
    exit(2);
}

static int open_flash(const char *path)
{
    int fd;
    if (path) {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    } else {
        char name[] = "/tmp/tinybridge-flash-XXXXXX";
        fd = mkstemp(name);
        if (fd >= 0)
            unlink(name);
    }
    if (fd < 0)
        die(path ? path : "temporary flash file");
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("flash file");
    if ((size_t)st.st_size < HOST_FLASH_BYTES) {
        /* new, or shorter than the flash: the missing part is erased flash */
        static uint8_t erased[4096];
        memset(erased, 0xFF, sizeof erased);
        for (off_t at = st.st_size; at < (off_t)HOST_FLASH_BYTES; at += (off_t)sizeof erased) {
            size_t n = (size_t)((off_t)HOST_FLASH_BYTES - at) < sizeof erased ? (size_t)((off_t)HOST_FLASH_BYTES - at)
                                                                              : sizeof erased;
            if (pwrite(fd, erased, n, at) != (ssize_t)n)
                die("flash file");
        }
    }
    return fd;
}

static int listen_tcp(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 1) != 0)
        die("tcp port");
    return fd;
}

static void announce(int listen_fd)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    getsockname(listen_fd, (struct sockaddr *)&addr, &len);
    fprintf(stderr, "tinybridge-sim: serving on 127.0.0.1:%d\n", ntohs(addr.sin_port));
}

static void *runtime_thread(void *arg)
{
    volatile uint8_t entry;
    (void)arg;
    host.stack_entry = (uintptr_t)&entry;
    tb_run();
    return NULL;
}

int main(int argc, char **argv)
{
    const char *flash_path = NULL;
    int tcp_port = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tcp") == 0 && i + 1 < argc)
            tcp_port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--flash") == 0 && i + 1 < argc)
            flash_path = argv[++i];
        else
            usage();
    }
    if (tcp_port < -1 || tcp_port > 65535)
        usage();
    signal(SIGPIPE, SIG_IGN);
    host.argv = argv;
    host.in_fd = host.out_fd = host.listen_fd = -1;

    const char *inherited = getenv(HOST_RESET_FDS);
    int client_fd = -1;
    if (inherited) {
        /* after a reset: the same flash, listening socket and client as before */
        if (sscanf(inherited, "%d %d %d", &host.flash_fd, &host.listen_fd, &client_fd) != 3)
            usage();
        unsetenv(HOST_RESET_FDS);
        fcntl(host.flash_fd, F_SETFD, FD_CLOEXEC);
        if (host.listen_fd >= 0)
            fcntl(host.listen_fd, F_SETFD, FD_CLOEXEC);
        if (client_fd >= 0)
            fcntl(client_fd, F_SETFD, FD_CLOEXEC);
    } else {
        host.flash_fd = open_flash(flash_path);
        if (tcp_port >= 0) {
            host.listen_fd = listen_tcp(tcp_port);
            announce(host.listen_fd);
        }
    }
    if (host.listen_fd >= 0) {
        host.in_fd = host.out_fd = client_fd;
    } else {
        host.in_fd = 0;
        host.out_fd = 1;
    }
    host.flash = mmap(NULL, HOST_FLASH_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, host.flash_fd, 0);
    if (host.flash == MAP_FAILED)
        die("flash mmap");

    /* the runtime's stack, with an inaccessible page below it so an overflow faults */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uint8_t *region = mmap(NULL, page + HOST_STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED || mprotect(region, page, PROT_NONE) != 0)
        die("stack");
    host.stack_low = region + page;
    memset(host.stack_low, HOST_STACK_PAINT, HOST_STACK_BYTES);
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    if (pthread_attr_setstack(&attr, host.stack_low, HOST_STACK_BYTES) != 0
        || pthread_create(&thread, &attr, runtime_thread, NULL) != 0) {
        fprintf(stderr, "tinybridge-sim: cannot start the runtime thread\n");
        return 1;
    }
    pthread_join(thread, NULL);
    return 0;
}
