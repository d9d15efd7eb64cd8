/* The Cortex-M7 kernel runner's interface between its hand-written main (kernel_runner.c) and the
 * thunks gen_runner.py generates from the public kernel headers (kernel_thunks.c). */
#ifndef KERNEL_RUNNER_H
#define KERNEL_RUNNER_H
#include <stdint.h>

/* argument kinds of a record (host/tinybridge/kernels/record.py) */
enum { TB_ARG_VALUE = 0, TB_ARG_POINTER = 1, TB_ARG_NULL = 2 };

/* One decoded argument: a VALUE's bytes, or a buffer inside the record (NULL: ptr 0, size 0). */
typedef struct {
    uint32_t kind;
    uint32_t size;
    void *ptr;
} tb_arg;

/* Checks arguments a[0..n) against the kernel's parameter types, calls it, stores its return value
 * (enums as int32) in ret and its size in *ret_size. Nonzero: the arguments do not fit. */
typedef int (*tb_thunk)(const tb_arg *a, uint32_t n, uint8_t *ret, uint32_t *ret_size);

typedef struct {
    const char *name;
    tb_thunk run;
} tb_kernel;

extern const tb_kernel tb_kernel_table[];
extern const uint32_t tb_kernel_count;

/* A VALUE argument of exactly `size` bytes, copied to dst. 0 on success. */
int tb_arg_value(const tb_arg *a, void *dst, uint32_t size);
/* A POINTER (size a multiple of item_size) or NULL argument. 0 on success. */
int tb_arg_pointer(const tb_arg *a, uint32_t item_size, void **p);

#endif
