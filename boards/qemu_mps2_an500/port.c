/* device/port.h for QEMU's mps2-an500 (Cortex-M7): the `qemu` device.
 *
 * Link: CMSDK UART0. Received bytes go from the RX interrupt into a ring sized for `window`
 * XFER_DATA frames; QEMU's UART holds one byte and takes the next from the host only once that one
 * is read, so the interrupt drains it at once. When the ring is full the interrupt leaves the byte
 * in the UART and switches itself off: QEMU then holds the host's bytes back (nothing is lost) until
 * tb_port_read() makes room. Transmit polls TXFULL. The baud rate is not emulated: any is accepted.
 *
 * Counter: CMSDK TIMER0 at 25 MHz, which QEMU's `-icount shift=0,sleep=off` ties to instructions
 * (one tick = 40). Its wrap interrupt extends it to 64 bits. It is paused while the core sleeps in
 * tb_port_wait_input(), so it counts executed instructions only, and an idle QEMU has no timer to
 * warp its virtual clock to (it would otherwise spin at 100 % CPU).
 *
 * Flash: the storage flash is RAM to QEMU, erased (0xFF) when QEMU powers on, then loaded with the
 * build's preload image if there is one; a reset keeps it; a new QEMU process starts afresh. */
#include <string.h>

#include "frame.h"
#include "mps2.h"
#include "port.h"

/* ---------------- the board ---------------- */

#define WINDOW 4
/* The longest frame on the wire: COBS adds a byte per 254, plus the 0x00 delimiter. */
#define MAX_WIRE_FRAME (TB_MAX_BODY + TB_MAX_BODY / 254 + 2)
#ifndef RX_RING_BYTES /* tests build it small to exercise the ring-full path */
#define RX_RING_BYTES (WINDOW * MAX_WIRE_FRAME + 256)
#endif
#ifndef COUNTER_RELOAD /* tests make it wrap often */
#define COUNTER_RELOAD 0xFFFFFFFFu
#endif

/* The F746's sectors 3-7, as offsets into the storage flash. */
static const uint32_t sector_start[] = {0, QEMU_SECTOR4_OFFSET, QEMU_SECTOR5_OFFSET, QEMU_SECTOR6_OFFSET,
                                        QEMU_SECTOR7_OFFSET, QEMU_STORAGE_BYTES};

static const tb_board board = {
    .name = "qemu-mps2-an500",
    .counter_unit = TB_COUNTER_INSTRUCTIONS,
    .window = WINDOW,
    .sector_count = 5,
    .sector_start = sector_start,
};

const tb_board *tb_port_board(void) { return &board; }

/* Survives a reset (mps2.h, QEMU_NOINIT_BASE); all zero when QEMU starts. */
typedef struct {
    uint32_t magic;  /* NOINIT_MAGIC: the storage flash was initialised in this QEMU run */
    uint32_t boots;
    uint32_t fault_pc, fault_status, fault_code; /* the fault that ended the previous boot */
} noinit_state;
#define NOINIT ((volatile noinit_state *)QEMU_NOINIT_BASE)
#define NOINIT_MAGIC 0x494E4254u /* "TBNI" */

static inline void irq_disable(void) { __asm volatile("cpsid i" ::: "memory"); }
static inline void irq_enable(void) { __asm volatile("cpsie i" ::: "memory"); }
static inline uint32_t irq_save(void)
{
    uint32_t primask;
    __asm volatile("mrs %0, primask\n cpsid i" : "=r"(primask)::"memory");
    return primask;
}
static inline void irq_restore(uint32_t primask) { __asm volatile("msr primask, %0" ::"r"(primask) : "memory"); }
#define BARRIER() __asm volatile("" ::: "memory")

/* ---------------- link ---------------- */

static uint8_t rx_ring[RX_RING_BYTES];
static volatile uint32_t rx_head, rx_tail; /* head: written by the interrupt, tail: by the core */
static volatile uint32_t rx_stalled;       /* the ring filled up: RX interrupt off, byte in the UART */

void UART0RX_IRQHandler(void)
{
    UART0_INTCLR = UART_INT_RX; /* before reading: a byte arriving after the last read re-raises it */
    while (UART0_STATE & UART_STATE_RXFULL) {
        uint32_t head = rx_head, next = head + 1 == RX_RING_BYTES ? 0 : head + 1;
        if (next == rx_tail) {
            UART0_CTRL &= ~UART_CTRL_RXIE;
            rx_stalled = 1;
            return;
        }
        rx_ring[head] = (uint8_t)UART0_DATA;
        BARRIER();
        rx_head = next;
    }
}

size_t tb_port_read(uint8_t *buf, size_t cap)
{
    uint32_t tail = rx_tail, head = rx_head;
    BARRIER();
    size_t n = 0;
    while (n < cap && tail != head) {
        buf[n++] = rx_ring[tail];
        tail = tail + 1 == RX_RING_BYTES ? 0 : tail + 1;
    }
    BARRIER();
    rx_tail = tail;
    if (rx_stalled && n > 0) {
        irq_disable();
        rx_stalled = 0;
        UART0_CTRL |= UART_CTRL_RXIE;
        NVIC_ISPR0 = 1u << UART0_RX_IRQ; /* the byte left waiting in the UART */
        irq_enable();
    }
    return n;
}

static void counter_pause(void);
static void counter_resume(void);

void tb_port_wait_input(void)
{
    /* With interrupts masked, a byte arriving between the check and the WFI still wakes the core
     * (WFI wakes on a pending interrupt even when PRIMASK masks it); it is taken after cpsie. */
    irq_disable();
    if (rx_head == rx_tail) {
        counter_pause();
        __asm volatile("dsb\n wfi" ::: "memory");
        counter_resume();
    }
    irq_enable();
}

void tb_port_write(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        while (UART0_STATE & UART_STATE_TXFULL) {
        }
        UART0_DATA = data[i];
    }
}

static void tx_drain(void)
{
    while (UART0_STATE & UART_STATE_TXFULL) {
    }
}

int tb_port_baud_supported(uint32_t baud) { return baud >= 1200 && baud <= 12000000; }

void tb_port_set_baud(uint32_t baud)
{
    (void)baud; /* QEMU does not emulate the line rate: the divider stays, the bytes flow as fast */
    tx_drain();
}

/* ---------------- counter ---------------- */

static volatile uint32_t ticks_hi;

void TIMER0_IRQHandler(void)
{
    /* The interrupt comes as the counter goes 1 -> 0; it reloads one tick (40 instructions) later.
     * Count the wrap once the reload happened, so that tb_port_counter() never sees it twice. */
    while (TIMER0_VALUE == 0) {
    }
    TIMER0_INTCLR = 1;
    ticks_hi++;
}

uint64_t tb_port_counter(void)
{
    uint32_t primask = irq_save();
    uint32_t hi = ticks_hi;
    uint32_t pending = TIMER0_INTCLR & 1u; /* first the status, then the value */
    uint32_t value = TIMER0_VALUE;
    if (pending && value != 0)
        hi++; /* wrapped, and the interrupt has not run yet */
    irq_restore(primask);
    /* one wrap = RELOAD + 1 ticks: 2^32 */
    uint64_t ticks = (uint64_t)hi * ((uint64_t)COUNTER_RELOAD + 1u) + (COUNTER_RELOAD - value);
    return ticks * TIMER_INSTRUCTIONS_PER_TICK;
}

static void counter_init(void)
{
    TIMER0_CTRL = 0;
    TIMER0_RELOAD = COUNTER_RELOAD;
    TIMER0_VALUE = COUNTER_RELOAD;
    TIMER0_INTCLR = 1;
    ticks_hi = 0;
    TIMER0_CTRL = TIMER_CTRL_EN | TIMER_CTRL_IRQEN;
}

static void counter_pause(void) { TIMER0_CTRL = TIMER_CTRL_IRQEN; }
static void counter_resume(void) { TIMER0_CTRL = TIMER_CTRL_EN | TIMER_CTRL_IRQEN; }

/* ---------------- flash ---------------- */

#define STORAGE ((uint8_t *)QEMU_STORAGE_BASE)

const uint8_t *tb_port_flash(void) { return STORAGE; }

int tb_port_flash_erase(uint32_t offset, uint32_t len)
{
    if (offset >= QEMU_STORAGE_BYTES || len > QEMU_STORAGE_BYTES - offset)
        return -1;
    for (int s = 0; s < board.sector_count; s++)
        if (sector_start[s + 1] > offset && sector_start[s] < offset + len)
            memset(STORAGE + sector_start[s], 0xFF, sector_start[s + 1] - sector_start[s]);
    return 0;
}

int tb_port_flash_program(uint32_t offset, const uint8_t *data, uint32_t len)
{
    if (offset > QEMU_STORAGE_BYTES || len > QEMU_STORAGE_BYTES - offset)
        return -1;
    uint8_t *dst = STORAGE + offset;
    int ok = 1;
    for (uint32_t i = 0; i < len; i++) {
        dst[i] &= data[i]; /* NOR: programming only clears bits */
        ok &= dst[i] == data[i];
    }
    return ok ? 0 : -1;
}

/* Preload image (qemu.py builds it): u32 magic, u32 count, then `count` records of
 * u32 offset, u32 length, the bytes padded to 4. */
static void apply_preload(void)
{
    const uint32_t *p = (const uint32_t *)QEMU_PRELOAD_BASE;
    if (p[0] != QEMU_PRELOAD_MAGIC)
        return;
    uint32_t count = p[1];
    p += 2;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t offset = p[0], len = p[1];
        if (tb_port_flash_program(offset, (const uint8_t *)(p + 2), len) != 0)
            return;
        p += 2 + (len + 3) / 4;
    }
}

/* ---------------- the rest ---------------- */

uint32_t tb_port_entropy(void)
{
    /* QEMU has no random source on this machine: the launcher's per-run seed, the boot count
     * (so every reset differs) and the timer, mixed (MurmurHash3's finaliser). */
    uint32_t x = MPS2_REG(QEMU_SEED_ADDR) ^ (NOINIT->boots * 0x9E3779B9u) ^ TIMER0_VALUE;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return x;
}

extern uint32_t _ebss, _estack;
#define STACK_PAINT 0xC5C5C5C5u

void board_paint_stack(void)
{
    uint32_t *sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *p = &_ebss; p < sp - 16; p++)
        *p = STACK_PAINT;
}

uint32_t tb_port_stack_high_water(void)
{
    const uint32_t *p = &_ebss;
    while (p < &_estack && *p == STACK_PAINT)
        p++;
    return (uint32_t)((uintptr_t)&_estack - (uintptr_t)p);
}

void tb_port_reset(void)
{
    tx_drain();
    __asm volatile("dsb" ::: "memory");
    SCB_AIRCR = SCB_AIRCR_SYSRESETREQ;
    __asm volatile("dsb" ::: "memory");
    for (;;) {
    }
}

/* A fault, an unexpected interrupt or a returning main: note it for the next boot, and reset
 * (the host sees a new boot id, as it would after a watchdog reset on a board). */
static void __attribute__((noreturn)) fail(uint32_t pc, uint32_t code)
{
    NOINIT->fault_pc = pc;
    NOINIT->fault_status = MPS2_REG(0xE000ED28u); /* CFSR */
    NOINIT->fault_code = code;
    tb_port_reset();
    for (;;) {
    }
}

void board_fault(const uint32_t *frame) { fail(frame[6], 0xFA17u); }

__attribute__((naked)) void HardFault_Handler(void)
{
    __asm volatile("tst lr, #4\n ite eq\n mrseq r0, msp\n mrsne r0, psp\n b board_fault\n");
}

void board_exit(int code) { fail(0, (uint32_t)code); }

int board_last_fault(uint32_t *pc, uint32_t *status, uint32_t *code)
{
    if (!NOINIT->fault_code)
        return 0;
    *pc = NOINIT->fault_pc;
    *status = NOINIT->fault_status;
    *code = NOINIT->fault_code;
    NOINIT->fault_code = 0;
    return 1;
}

void board_init(void)
{
    if (NOINIT->magic != NOINIT_MAGIC) {
        /* QEMU just started: its RAM is zero, the flash would be erased */
        memset(STORAGE, 0xFF, QEMU_STORAGE_BYTES);
        apply_preload();
        NOINIT->boots = 0;
        NOINIT->fault_code = 0;
        NOINIT->magic = NOINIT_MAGIC;
    }
    NOINIT->boots++;

    UART0_CTRL = 0;
    UART0_BAUDDIV = 25000000u / 115200u; /* >= 16, or QEMU ignores the UART */
    UART0_INTCLR = 0xFu;
    rx_head = rx_tail = rx_stalled = 0;
    UART0_CTRL = UART_CTRL_TXEN | UART_CTRL_RXEN | UART_CTRL_RXIE;
    counter_init();
    NVIC_ICPR0 = (1u << UART0_RX_IRQ) | (1u << TIMER0_IRQ);
    NVIC_ISER0 = (1u << UART0_RX_IRQ) | (1u << TIMER0_IRQ);
    irq_enable();
}
