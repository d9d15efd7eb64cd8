#include "semihost.h"

#include <string.h>

enum {
    SYS_OPEN = 0x01, SYS_CLOSE = 0x02, SYS_WRITE0 = 0x04, SYS_WRITE = 0x05, SYS_READ = 0x06,
    SYS_GET_CMDLINE = 0x15, SYS_EXIT_EXTENDED = 0x20
};
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u

static uint32_t semihost_call(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm("r0") = op;
    register const void *r1 __asm("r1") = arg;
    __asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

int semihost_open(const char *path, int write)
{
    /* modes of fopen: 1 = "rb", 5 = "wb" */
    uint32_t args[3] = {(uint32_t)path, write ? 5u : 1u, (uint32_t)strlen(path)};
    return (int)semihost_call(SYS_OPEN, args);
}

int semihost_read(int handle, void *buf, uint32_t len)
{
    uint32_t args[3] = {(uint32_t)handle, (uint32_t)buf, len};
    return (int)semihost_call(SYS_READ, args);
}

int semihost_write(int handle, const void *buf, uint32_t len)
{
    uint32_t args[3] = {(uint32_t)handle, (uint32_t)buf, len};
    return (int)semihost_call(SYS_WRITE, args);
}

int semihost_close(int handle)
{
    uint32_t args[1] = {(uint32_t)handle};
    return (int)semihost_call(SYS_CLOSE, args);
}

void semihost_puts(const char *s)
{
    semihost_call(SYS_WRITE0, s);
}

const char *semihost_cmdline(void)
{
    static char line[256];
    uint32_t args[2] = {(uint32_t)line, sizeof line};
    if (semihost_call(SYS_GET_CMDLINE, args) != 0) line[0] = 0;
    return line;
}

void semihost_exit(int code)
{
    uint32_t args[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)code};
    semihost_call(SYS_EXIT_EXTENDED, args);
    for (;;) {}
}

/* startup.c's weak board_exit: a test binary reports main's result to QEMU's exit status */
void board_exit(int code)
{
    semihost_exit(code);
}
