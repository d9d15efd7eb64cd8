/* Replays recorded kernel calls on the Cortex-M7 (QEMU mps2-an500, semihosting).
 *
 * qemu-system-arm ... -semihosting-config enable=on,target=native,arg=NAME,arg=VECTORS,arg=RESULTS
 *
 * Reads VECTORS one record at a time into a static buffer, calls the kernel it names through the
 * generated thunk table (kernel_thunks.c), and writes its return value and the post-call bytes of
 * every buffer to RESULTS. Formats: host/tinybridge/kernels/record.py. Each buffer sits between
 * guard bytes; a call that changes them is reported in the result's status word.
 *
 * Exit status: 0 every record ran; 1 bad command line or files; 2 malformed record; 3 unknown
 * kernel; 4 arguments that do not fit the kernel's prototype; 5 record larger than the buffer.
 * A fault exits with 0xDEAD (startup.c). Paths must not contain spaces. */
#include <stdint.h>
#include <string.h>

#include "kernel_runner.h"
#include "kernel_thunks.h"
#include "semihost.h"

#define VECTOR_MAGIC 0x43524254u /* "TBRC" */
#define RESULT_MAGIC 0x53524254u /* "TBRS" */
#define END_MAGIC 0x4E454254u    /* "TBEN" */
#define STATUS_GUARD 0x100u

enum { EXIT_USAGE = 1, EXIT_MALFORMED = 2, EXIT_UNKNOWN = 3, EXIT_BAD_ARGS = 4, EXIT_TOO_BIG = 5 };

static uint8_t body[TB_RECORD_MAX] __attribute__((aligned(8)));
static tb_arg args[TB_MAX_ARGS];
static uint32_t blob_size[TB_MAX_ARGS], blob_offset[TB_MAX_ARGS];
static uint8_t ret[TB_MAX_RET] __attribute__((aligned(8)));

int tb_arg_value(const tb_arg *a, void *dst, uint32_t size)
{
    if (a->kind != TB_ARG_VALUE || a->size != size) return 1;
    memcpy(dst, a->ptr, size);
    return 0;
}

int tb_arg_pointer(const tb_arg *a, uint32_t item_size, void **p)
{
    if (a->kind == TB_ARG_NULL) {
        *p = 0;
        return 0;
    }
    if (a->kind != TB_ARG_POINTER || a->size % item_size != 0) return 1;
    *p = a->ptr;
    return 0;
}

static void put_uint(uint32_t v)
{
    char s[11];
    int i = 10;
    s[i] = 0;
    do {
        s[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    semihost_puts(s + i);
}

static void fail(int code, uint32_t index, const char *what) __attribute__((noreturn));
static void fail(int code, uint32_t index, const char *what)
{
    semihost_puts("kernel_runner: record ");
    put_uint(index);
    semihost_puts(": ");
    semihost_puts(what);
    semihost_puts("\n");
    semihost_exit(code);
}

/* a u32 at *pos of a body of len bytes; advances *pos */
static int get32(uint32_t *pos, uint32_t len, uint32_t *v)
{
    if (len < 4 || *pos > len - 4) return 1;
    memcpy(v, body + *pos, 4);
    *pos += 4;
    return 0;
}

static int guards_intact(uint32_t nblobs, uint32_t *bad)
{
    for (uint32_t b = 0; b < nblobs; b++) {
        const uint8_t *lo = body + blob_offset[b] - TB_RECORD_GUARD_BYTES;
        const uint8_t *hi = body + blob_offset[b] + blob_size[b];
        for (uint32_t i = 0; i < TB_RECORD_GUARD_BYTES; i++) {
            if (lo[i] != TB_RECORD_GUARD_FILL || hi[i] != TB_RECORD_GUARD_FILL) {
                *bad = b;
                return 0;
            }
        }
    }
    return 1;
}

static void put(int fd, const void *p, uint32_t n, uint32_t index)
{
    static const uint8_t zeros[4];
    if (semihost_write(fd, p, n) != 0) fail(EXIT_USAGE, index, "cannot write the results file");
    if (n % 4 && semihost_write(fd, zeros, 4 - n % 4) != 0) fail(EXIT_USAGE, index, "cannot write the results file");
}

/* Decodes, runs and reports record `index` (its body is in `body`, len bytes). */
static void run_record(uint32_t index, uint32_t len, int out)
{
    uint32_t pos = 0, name_len, nblobs, nargs;
    if (get32(&pos, len, &name_len) || name_len > len - pos) fail(EXIT_MALFORMED, index, "bad name");
    const char *name = (const char *)body + pos;
    pos += (name_len + 3u) & ~3u;
    if (get32(&pos, len, &nblobs) || nblobs > TB_MAX_ARGS) fail(EXIT_MALFORMED, index, "bad blob count");
    for (uint32_t b = 0; b < nblobs; b++) {
        uint32_t size, off;
        if (get32(&pos, len, &size) || get32(&pos, len, &off)) fail(EXIT_MALFORMED, index, "truncated blob table");
        if (off < TB_RECORD_GUARD_BYTES || off > len || size > len - off || len - off - size < TB_RECORD_GUARD_BYTES)
            fail(EXIT_MALFORMED, index, "blob outside the record");
        blob_size[b] = size;
        blob_offset[b] = off;
    }
    if (get32(&pos, len, &nargs) || nargs > TB_MAX_ARGS) fail(EXIT_MALFORMED, index, "bad argument count");
    for (uint32_t i = 0; i < nargs; i++) {
        tb_arg *a = &args[i];
        if (get32(&pos, len, &a->kind)) fail(EXIT_MALFORMED, index, "truncated argument");
        if (a->kind == TB_ARG_VALUE) {
            if (get32(&pos, len, &a->size) || a->size > len - pos) fail(EXIT_MALFORMED, index, "truncated value");
            a->ptr = body + pos;
            pos += (a->size + 3u) & ~3u;
        } else if (a->kind == TB_ARG_POINTER) {
            uint32_t b, off;
            if (get32(&pos, len, &b) || get32(&pos, len, &off) || get32(&pos, len, &a->size))
                fail(EXIT_MALFORMED, index, "truncated pointer");
            if (b >= nblobs || off > blob_size[b] || a->size > blob_size[b] - off)
                fail(EXIT_MALFORMED, index, "pointer outside its blob");
            a->ptr = body + blob_offset[b] + off;
        } else if (a->kind == TB_ARG_NULL) {
            a->size = 0;
            a->ptr = 0;
        } else {
            fail(EXIT_MALFORMED, index, "bad argument kind");
        }
    }
    uint32_t bad;
    if (!guards_intact(nblobs, &bad)) fail(EXIT_MALFORMED, index, "guard bytes missing");

    const tb_kernel *k = 0;
    for (uint32_t i = 0; i < tb_kernel_count; i++) {
        if (strlen(tb_kernel_table[i].name) == name_len && memcmp(tb_kernel_table[i].name, name, name_len) == 0) {
            k = &tb_kernel_table[i];
            break;
        }
    }
    if (!k) fail(EXIT_UNKNOWN, index, "unknown kernel (rebuild the runner?)");
    uint32_t ret_size = 0;
    if (k->run(args, nargs, ret, &ret_size) != 0)
        fail(EXIT_BAD_ARGS, index, "arguments do not fit the kernel's prototype");

    uint32_t head[5] = {RESULT_MAGIC, index, 0, ret_size, nblobs};
    if (!guards_intact(nblobs, &bad)) head[2] = STATUS_GUARD + bad;
    put(out, head, sizeof head, index);
    if (ret_size) put(out, ret, ret_size, index);
    for (uint32_t b = 0; b < nblobs; b++) {
        put(out, &blob_size[b], 4, index);
        if (blob_size[b]) put(out, body + blob_offset[b], blob_size[b], index);
    }
}

/* the next space-separated word of *s, NUL-terminated in place */
static char *word(char **s)
{
    while (**s == ' ') (*s)++;
    char *w = *s;
    while (**s && **s != ' ') (*s)++;
    if (**s) *(*s)++ = 0;
    return w;
}

int main(void)
{
    char *cmd = (char *)semihost_cmdline();
    word(&cmd); /* program name */
    const char *vectors = word(&cmd), *results = word(&cmd);
    if (!*vectors || !*results) fail(EXIT_USAGE, 0, "usage: NAME VECTORS RESULTS");
    int in = semihost_open(vectors, 0), out = semihost_open(results, 1);
    if (in < 0 || out < 0) fail(EXIT_USAGE, 0, "cannot open the vectors or results file");

    uint32_t index = 0;
    for (;; index++) {
        uint32_t head[2];
        int missing = semihost_read(in, head, sizeof head);
        if (missing == (int)sizeof head) break; /* end of file */
        if (missing != 0) fail(EXIT_MALFORMED, index, "truncated record header");
        if (head[0] != VECTOR_MAGIC) fail(EXIT_MALFORMED, index, "bad record magic");
        if (head[1] > TB_RECORD_MAX) fail(EXIT_TOO_BIG, index, "record larger than TB_RECORD_MAX");
        if (head[1] % 8 != 0) fail(EXIT_MALFORMED, index, "record length not a multiple of 8");
        if (semihost_read(in, body, head[1]) != 0) fail(EXIT_MALFORMED, index, "truncated record");
        run_record(index, head[1], out);
    }
    uint32_t end[2] = {END_MAGIC, index};
    put(out, end, sizeof end, index);
    semihost_close(in);
    semihost_close(out);
    return 0;
}
