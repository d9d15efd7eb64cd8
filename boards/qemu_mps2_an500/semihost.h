/* ARM semihosting (BKPT 0xAB) for on-target test and benchmark binaries under QEMU
 * (-semihosting-config enable=on,target=native). Not used by the firmware. */
#ifndef SEMIHOST_H
#define SEMIHOST_H
#include <stdint.h>

int semihost_open(const char *path, int write); /* handle, or -1 */
int semihost_read(int handle, void *buf, uint32_t len);   /* bytes NOT read (0 = all) */
int semihost_write(int handle, const void *buf, uint32_t len); /* bytes NOT written */
int semihost_close(int handle);
void semihost_puts(const char *s);
/* the command line QEMU was given (-semihosting-config ...,arg=...), "" if none */
const char *semihost_cmdline(void);
void semihost_exit(int code) __attribute__((noreturn));

#endif
