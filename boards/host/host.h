/* The host (POSIX) board: the state main.c sets up and port.c serves. */
#ifndef HOST_H
#define HOST_H
#include <stddef.h>
#include <stdint.h>

/* The F746's 1 MB flash with its sector map; see port.c for the layout. */
#define HOST_FLASH_BYTES (1024u * 1024u)

/* The runtime's stack, the F746 build's budget. Sanitizer instrumentation needs several times
 * more, so the sanitized build gets four times as much. */
#if defined(__SANITIZE_ADDRESS__)
#define HOST_STACK_BYTES (4u * 32u * 1024u)
#else
#define HOST_STACK_BYTES (32u * 1024u)
#endif

typedef struct {
    char **argv;               /* to re-execute on reset */
    int in_fd, out_fd;         /* the link: stdin/stdout, or the TCP client (-1: none yet) */
    int listen_fd;             /* --tcp: the listening socket, else -1 */
    int flash_fd;
    uint8_t *flash;            /* HOST_FLASH_BYTES, mapped from flash_fd */
    uint8_t *stack_low;        /* the painted runtime stack */
    uintptr_t stack_entry;     /* stack pointer when the runtime started */
} host_board;

extern host_board host;

#define HOST_STACK_PAINT 0xC5u
/* The environment variable through which a reset hands its descriptors to the new image. */
#define HOST_RESET_FDS "TINYBRIDGE_SIM_RESET_FDS"

#endif
