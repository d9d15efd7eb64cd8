/* Kernel benchmark firmware for QEMU mps2-an500 (Cortex-M7): instructions per call of every kernel
 * in bench_ops.inc on every layer shape of a job file, plain-C reference vs the kernel as built
 * for the target, with a byte-for-byte check that both give the same outputs.
 *
 * qemu-system-arm -M mps2-an500 ... -icount shift=0,sleep=off
 *     -semihosting-config enable=on,target=native,arg=bench,arg=JOBS,arg=RESULTS[,arg=FILTER]
 *
 * JOBS: "TBBK", version, layer count, layer record size (int32 each), then bench_layer records.
 * RESULTS (text, one line each):
 *   O <ticks> <calls>                      the empty call, for the overhead per call
 *   K <kernel> <unit> <layer> <status> <ret> <ops> <ref ticks> <ref calls> <ticks> <calls> <out_h>
 *     <chunk> [first difference: buffer <index> <byte offset> <reference value> <value>]
 *     status: ok | differ | toobig; out_h: output rows measured (fewer than the layer's when the
 *     layer's buffers do not fit the arena; ops are those of the rows measured); chunk: output
 *     channels measured when a weight gradient runs by chunks of output channels (0: all)
 * FILTER: kernel names separated by '+' (QEMU's option syntax reserves commas; default: all).
 *
 * Timing: CMSDK TIMER0 counts the 25 MHz system clock; with -icount shift=0,sleep=off one tick is
 * exactly 40 instructions. A call shorter than MIN_TICKS is repeated (fresh identical inputs each
 * time) until the total reaches MIN_TICKS, so quantization stays below 0.1 %. */
#include <stdint.h>
#include <string.h>

#include "bench.h"
#include "semihost.h"
#include "timer.h"

extern const bench_kernel bench_ops_main[], bench_ops_ref[];
extern const int bench_ops_main_count, bench_ops_ref_count;

#define JOB_MAGIC 0x4B424254u /* "TBBK" */
#define JOB_VERSION 1
#define MAX_LAYERS 64
#define MIN_TICKS 50000u      /* 2 M instructions per measurement */
#define ARENA_BYTES (280u * 1024u)

static uint8_t arena[ARENA_BYTES] __attribute__((aligned(8)));
static uint32_t arena_need;
static bench_layer layers[MAX_LAYERS];
static int result_fd = -1;

/* ---------------- buffers ---------------- */

int bench_add_buf(bench_ctx *c, uint32_t bytes, int fill, int role, int32_t lo, int32_t hi)
{
    if (c->nbuf >= BENCH_MAX_BUFS) {
        arena_need = 0xFFFFFFFFu;
        return -1;
    }
    bench_buf *b = &c->buf[c->nbuf++];
    uint32_t at = (arena_need + 15u) & ~15u;
    b->bytes = bytes;
    b->fill = (uint8_t)fill;
    b->role = (uint8_t)role;
    b->lo = lo;
    b->hi = hi;
    b->p = at + bytes <= ARENA_BYTES ? arena + at : arena;
    arena_need = at + bytes;
    return c->nbuf - 1;
}

static uint32_t rng_state;

static uint32_t rng(void)
{
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return rng_state = x;
}

static void fill_buffers(bench_ctx *c, uint32_t seed)
{
    for (int i = 0; i < c->nbuf; i++) {
        bench_buf *b = &c->buf[i];
        rng_state = seed * 2654435761u + (uint32_t)i * 40503u + 1u;
        if (rng_state == 0) rng_state = 1;
        uint8_t *p8 = (uint8_t *)b->p;
        int32_t *p32 = (int32_t *)b->p;
        uint32_t n32 = b->bytes / 4;
        switch (b->fill) {
        case FILL_ZERO:
            memset(b->p, 0, b->bytes);
            break;
        case FILL_S8:
            for (uint32_t k = 0; k < b->bytes; k++) p8[k] = (uint8_t)rng();
            break;
        case FILL_S8W: /* symmetric int8 weights / gradients: [-127, 127] */
            for (uint32_t k = 0; k < b->bytes; k++) {
                uint8_t v = (uint8_t)rng();
                p8[k] = v == 0x80 ? 0x81 : v;
            }
            break;
        case FILL_S32:
            for (uint32_t k = 0; k < n32; k++)
                p32[k] = b->lo + (int32_t)(rng() % (uint32_t)(b->hi - b->lo + 1));
            break;
        case FILL_MULT:
            for (uint32_t k = 0; k < n32; k++) p32[k] = (int32_t)((1u << 30) | (rng() >> 2));
            break;
        case FILL_SHIFT:
            for (uint32_t k = 0; k < n32; k++) p32[k] = b->lo - (int32_t)(rng() & 1u);
            break;
        case FILL_SEL:
            for (uint32_t k = 0; k < n32; k++) p32[k] = (int32_t)k;
            break;
        case FILL_F32:
            for (uint32_t k = 0; k < n32; k++)
                ((float *)b->p)[k] =
                    (float)(b->lo + (int32_t)(rng() % (uint32_t)(b->hi - b->lo + 1))) / 1024.0f;
            break;
        default:
            break;
        }
    }
}

static uint64_t fnv(uint64_t h, const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

static uint64_t hash_outputs(const bench_ctx *c)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (int i = 0; i < c->nbuf; i++)
        if (c->buf[i].role == ROLE_OUT) h = fnv(h, (const uint8_t *)c->buf[i].p, c->buf[i].bytes);
    h = fnv(h, (const uint8_t *)&c->ret, sizeof c->ret);
    return fnv(h, (const uint8_t *)&c->fret, sizeof c->fret);
}

/* ---------------- timing ---------------- */

__attribute__((noinline)) static uint32_t time_call(const bench_kernel *k, bench_ctx *c)
{
    uint32_t t0 = timer_ticks();
    k->run(c);
    return timer_ticks() - t0;
}

/* the empty call: the same dispatch and a call with a kernel's argument count, no work */
__attribute__((noinline)) int32_t bench_empty(const void *a, int32_t b, const void *c, int32_t d,
                                              const void *e, const void *f, const void *g,
                                              void *h, void *i, void *j)
{
    (void)b, (void)c, (void)d, (void)e, (void)f, (void)g, (void)h, (void)i, (void)j;
    __asm volatile("" ::: "memory");
    return a != 0;
}

static void run_empty(bench_ctx *c)
{
    c->ret = bench_empty(&c->cp, c->in.h, c->buf[0].p, c->out.h, c->buf[1].p, c->buf[2].p,
                         c->buf[3].p, c->buf[4].p, c->buf[5].p, c->buf[6].p);
}

typedef struct {
    uint64_t ticks;
    uint32_t calls;
    uint64_t hash;
} measurement;

static measurement measure(const bench_kernel *k, bench_ctx *c, uint32_t seed)
{
    measurement m;
    fill_buffers(c, seed);
    c->ret = 0;
    c->fret = 0.0f;
    m.ticks = time_call(k, c);
    m.calls = 1;
    m.hash = hash_outputs(c);
    while (m.ticks < MIN_TICKS) {
        fill_buffers(c, seed);
        m.ticks += time_call(k, c);
        m.calls++;
    }
    return m;
}

/* After a mismatch: the first differing byte of the outputs (buffer, offset, reference value,
 * value), if a copy of the reference outputs fits in the arena; 0 otherwise. */
static int first_difference(const bench_kernel *kr, const bench_kernel *km, bench_ctx *c,
                            uint32_t seed, int32_t where[4])
{
    uint32_t out_bytes = 0;
    for (int i = 0; i < c->nbuf; i++)
        if (c->buf[i].role == ROLE_OUT) out_bytes += c->buf[i].bytes;
    uint32_t at = (arena_need + 15u) & ~15u;
    if (at + out_bytes > ARENA_BYTES) return 0;
    uint8_t *copy = arena + at;
    fill_buffers(c, seed);
    kr->run(c);
    uint32_t o = 0;
    for (int i = 0; i < c->nbuf; i++)
        if (c->buf[i].role == ROLE_OUT) {
            memcpy(copy + o, c->buf[i].p, c->buf[i].bytes);
            o += c->buf[i].bytes;
        }
    fill_buffers(c, seed);
    km->run(c);
    o = 0;
    for (int i = 0; i < c->nbuf; i++) {
        if (c->buf[i].role != ROLE_OUT) continue;
        const uint8_t *p = (const uint8_t *)c->buf[i].p;
        for (uint32_t k = 0; k < c->buf[i].bytes; k++)
            if (p[k] != copy[o + k]) {
                where[0] = i, where[1] = (int32_t)k, where[2] = (int8_t)copy[o + k],
                where[3] = (int8_t)p[k];
                return 1;
            }
        o += c->buf[i].bytes;
    }
    return 0;
}

/* ---------------- output ---------------- */

static char line[256];
static int line_len;

static void put_str(const char *s)
{
    while (*s && line_len < (int)sizeof line - 1) line[line_len++] = *s++;
}

/* " <v>" */
static void put_num(uint64_t v, int negative)
{
    char s[23];
    int i = 22;
    s[i] = 0;
    do {
        s[--i] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v);
    if (negative) s[--i] = '-';
    s[--i] = ' ';
    put_str(s + i);
}

static void put_u64(uint64_t v) { put_num(v, 0); }
static void put_i32(int32_t v) { put_num(v < 0 ? (uint64_t)(-(int64_t)v) : (uint64_t)v, v < 0); }

static void end_line(void)
{
    line[line_len++] = '\n';
    semihost_write(result_fd, line, (uint32_t)line_len);
    line_len = 0;
}

/* ---------------- main ---------------- */

static int next_word(const char **s, char *out, int cap)
{
    while (**s == ' ') (*s)++;
    int n = 0;
    while (**s && **s != ' ') {
        if (n < cap - 1) out[n++] = **s;
        (*s)++;
    }
    out[n] = 0;
    return n;
}

static int selected(const char *filter, const char *name)
{
    if (!filter[0] || !strcmp(filter, "all")) return 1;
    size_t n = strlen(name);
    for (const char *p = filter; *p;) {
        const char *e = strchr(p, '+');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, name, n)) return 1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

/* fewer output rows, same geometry otherwise; 0 if the layer cannot shrink */
static int shrink(bench_layer *L)
{
    if (L->kind == BK_FC || L->kind == BK_POOL || L->out_h <= 1) return 0;
    L->out_h = (L->out_h + 1) / 2;
    if (L->kind == BK_ADD)
        L->in_h = L->out_h;
    else
        L->in_h = L->out_h * L->stride < L->in_h ? L->out_h * L->stride : L->in_h;
    return 1;
}

int main(void)
{
    static char job_path[128], result_path[128], filter[128];
    char prog[32];
    const char *cmd = semihost_cmdline();
    next_word(&cmd, prog, sizeof prog);
    next_word(&cmd, job_path, sizeof job_path);
    next_word(&cmd, result_path, sizeof result_path);
    next_word(&cmd, filter, sizeof filter);
    if (!job_path[0] || !result_path[0]) {
        semihost_puts("usage: bench JOBS RESULTS [FILTER]\n");
        return 1;
    }
    int fd = semihost_open(job_path, 0);
    if (fd < 0) return 2;
    int32_t head[4];
    if (semihost_read(fd, head, sizeof head) != 0 || (uint32_t)head[0] != JOB_MAGIC ||
        head[1] != JOB_VERSION || head[2] < 0 || head[2] > MAX_LAYERS ||
        head[3] != (int32_t)sizeof(bench_layer))
        return 3;
    int n_layers = head[2];
    if (semihost_read(fd, layers, (uint32_t)(n_layers * (int)sizeof(bench_layer))) != 0) return 3;
    semihost_close(fd);
    result_fd = semihost_open(result_path, 1);
    if (result_fd < 0) return 4;
    if (bench_ops_main_count != bench_ops_ref_count) return 5;

    timer_start();

    /* overhead of one empty call, averaged over many (each measured like a kernel call) */
    {
        static bench_ctx c;
        const bench_kernel empty = {"empty", 0, "", 0, run_empty};
        memset(&c, 0, sizeof c);
        uint64_t ticks = 0;
        const uint32_t calls = 20000;
        for (uint32_t i = 0; i < calls; i++) ticks += time_call(&empty, &c);
        put_str("O");
        put_u64(ticks);
        put_u64(calls);
        end_line();
    }

    for (int k = 0; k < bench_ops_main_count; k++) {
        const bench_kernel *km = &bench_ops_main[k], *kr = &bench_ops_ref[k];
        if (!selected(filter, km->name)) continue;
        for (int li = 0; li < n_layers; li++) {
            if (!(km->kinds & (uint32_t)layers[li].kind)) continue;
            static bench_ctx c;
            memset(&c, 0, sizeof c);
            c.L = layers[li];
            arena_need = 0;
            int applies = km->plan(&c);
            while (applies && arena_need > ARENA_BYTES && shrink(&c.L)) {
                bench_layer L = c.L;
                memset(&c, 0, sizeof c);
                c.L = L;
                arena_need = 0;
                applies = km->plan(&c);
            }
            if (!applies) continue;
            put_str("K ");
            put_str(km->name);
            put_str(" ");
            put_str(km->unit);
            put_u64((uint64_t)li);
            if (arena_need > ARENA_BYTES) {
                put_str(" toobig 0 0 0 0 0 0 0 0");
                end_line();
                continue;
            }
            uint32_t seed = (uint32_t)(k * 1000 + li + 1);
            measurement ref = measure(kr, &c, seed);
            int32_t ref_ret = c.ret;
            measurement dut = measure(km, &c, seed);
            put_str(ref.hash == dut.hash && ref_ret == c.ret ? " ok" : " differ");
            put_i32(c.ret);
            put_u64((uint64_t)c.ops);
            put_u64(ref.ticks);
            put_u64(ref.calls);
            put_u64(dut.ticks);
            put_u64(dut.calls);
            put_u64((uint64_t)c.L.out_h);
            put_u64((uint64_t)c.chunk);
            int32_t where[4];
            if (ref.hash != dut.hash && first_difference(kr, km, &c, seed, where)) {
                put_str(" first difference: buffer");
                for (int i = 0; i < 4; i++) put_i32(where[i]);
            }
            end_line();
        }
    }
    semihost_close(result_fd);
    return 0;
}
