/* device/port.h for a POSIX process: the `sim` device. */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "host.h"
#include "port.h"

host_board host;

/* The STM32F746's flash (sectors 0-3 of 32 KB, 4 of 128 KB, 5-7 of 256 KB) in the 1 MB flash file.
 * The firmware's sectors 0-2 stay unused here; the storage flash is sectors 3-7, as on the boards:
 * checkpoints in 3 and 4, the shared sector 5, model slots A and B in 6 and 7. */
#define STORAGE_OFFSET 0x18000u
#define STORAGE_BYTES (HOST_FLASH_BYTES - STORAGE_OFFSET)
static const uint32_t sector_start[] = {0x00000, 0x08000, 0x28000, 0x68000, 0xA8000, STORAGE_BYTES};

static const tb_board board = {
    .name = "sim",
    .counter_unit = TB_COUNTER_NANOSECONDS,
    .window = 4,
    .sector_count = 5,
    .sector_start = sector_start,
};

const tb_board *tb_port_board(void) { return &board; }

/* ---------------- link ---------------- */

static void drop_client(void)
{
    if (host.listen_fd < 0)
        exit(0); /* stdin closed: the host is gone, and with it this process's reason to be */
    close(host.in_fd);
    host.in_fd = host.out_fd = -1;
}

size_t tb_port_read(uint8_t *buf, size_t cap)
{
    if (host.in_fd < 0)
        return 0;
    struct pollfd p = {host.in_fd, POLLIN, 0};
    if (poll(&p, 1, 0) <= 0)
        return 0;
    ssize_t n = read(host.in_fd, buf, cap);
    if (n > 0)
        return (size_t)n;
    if (n == 0 || (errno != EINTR && errno != EAGAIN))
        drop_client();
    return 0;
}

static void accept_client(void)
{
    int fd;
    do
        fd = accept(host.listen_fd, NULL, NULL);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        perror("tinybridge-sim: accept");
        exit(1);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    host.in_fd = host.out_fd = fd;
}

void tb_port_wait_input(void)
{
    if (host.in_fd < 0)
        accept_client();
    struct pollfd p = {host.in_fd, POLLIN, 0};
    poll(&p, 1, -1);
}

void tb_port_write(const uint8_t *data, size_t len)
{
    while (len > 0 && host.out_fd >= 0) {
        ssize_t n = write(host.out_fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            drop_client(); /* like a UART with nobody listening: the bytes are lost */
            return;
        }
        data += n;
        len -= (size_t)n;
    }
}

/* ---------------- flash ---------------- */

const uint8_t *tb_port_flash(void) { return host.flash + STORAGE_OFFSET; }

int tb_port_flash_erase(uint32_t offset, uint32_t len)
{
    if (offset >= STORAGE_BYTES || len > STORAGE_BYTES - offset)
        return -1;
    uint8_t *storage = host.flash + STORAGE_OFFSET;
    for (int s = 0; s < board.sector_count; s++)
        if (sector_start[s + 1] > offset && sector_start[s] < offset + len)
            memset(storage + sector_start[s], 0xFF, sector_start[s + 1] - sector_start[s]);
    return 0;
}

int tb_port_flash_program(uint32_t offset, const uint8_t *data, uint32_t len)
{
    if (offset > STORAGE_BYTES || len > STORAGE_BYTES - offset)
        return -1;
    uint8_t *dst = host.flash + STORAGE_OFFSET + offset;
    int ok = 1;
    for (uint32_t i = 0; i < len; i++) {
        dst[i] &= data[i]; /* NOR: programming only clears bits */
        ok &= dst[i] == data[i];
    }
    return ok ? 0 : -1;
}

/* ---------------- the rest ---------------- */

uint64_t tb_port_counter(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

uint32_t tb_port_entropy(void)
{
    uint32_t v;
    if (getentropy(&v, sizeof v) != 0)
        v = (uint32_t)tb_port_counter() ^ (uint32_t)getpid();
    return v;
}

uint32_t tb_port_stack_high_water(void)
{
    const uint8_t *p = host.stack_low;
    while (*p == HOST_STACK_PAINT)
        p++;
    return (uint32_t)(host.stack_entry - (uintptr_t)p);
}

static void keep_across_exec(int fd)
{
    if (fd >= 0)
        fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) & ~FD_CLOEXEC);
}

void tb_port_reset(void)
{
    /* A board keeps its flash and its link across a reset: so does the new process image. */
    char fds[64];
    snprintf(fds, sizeof fds, "%d %d %d", host.flash_fd, host.listen_fd, host.listen_fd >= 0 ? host.in_fd : -1);
    keep_across_exec(host.flash_fd);
    keep_across_exec(host.listen_fd);
    keep_across_exec(host.in_fd);
    setenv(HOST_RESET_FDS, fds, 1);
    execvp(host.argv[0], host.argv);
    perror("tinybridge-sim: reset");
    _exit(1);
}

int tb_port_baud_supported(uint32_t baud)
{
    return baud >= 1200 && baud <= 12000000; /* a pipe has no baud rate: any sane value is fine */
}

void tb_port_set_baud(uint32_t baud) { (void)baud; }
