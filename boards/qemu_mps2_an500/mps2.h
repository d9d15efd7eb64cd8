/* QEMU mps2-an500 (Cortex-M7, 25 MHz system clock): the registers the firmware port uses, and the
 * firmware's memory layout. Written from the CMSDK and ARMv7-M reference manuals (no vendor
 * headers). qemu.py reads the QEMU_* layout constants below: keep them `#define NAME 0x...u`. */
#ifndef MPS2_H
#define MPS2_H
#include <stdint.h>

#define MPS2_REG(addr) (*(volatile uint32_t *)(addr))

/* ---- CMSDK APB UART0 (RX interrupt = IRQ 0, TX = IRQ 1) ---- */
#define UART0_BASE 0x40004000u
#define UART0_DATA MPS2_REG(UART0_BASE + 0x00u)
#define UART0_STATE MPS2_REG(UART0_BASE + 0x04u)   /* b0 TXFULL, b1 RXFULL, b2 TXOVR, b3 RXOVR */
#define UART0_CTRL MPS2_REG(UART0_BASE + 0x08u)    /* b0 TXEN, b1 RXEN, b2 TXIE, b3 RXIE */
#define UART0_INTCLR MPS2_REG(UART0_BASE + 0x0Cu)  /* W1C: b0 TX, b1 RX, b2 TXO, b3 RXO */
#define UART0_BAUDDIV MPS2_REG(UART0_BASE + 0x10u) /* QEMU ignores the UART below 16 */
#define UART_STATE_TXFULL 0x1u
#define UART_STATE_RXFULL 0x2u
#define UART_CTRL_TXEN 0x1u
#define UART_CTRL_RXEN 0x2u
#define UART_CTRL_RXIE 0x8u
#define UART_INT_RX 0x2u
#define UART0_RX_IRQ 0

/* ---- CMSDK APB TIMER0 (IRQ 8): 32-bit down counter at the 25 MHz system clock ---- */
#define TIMER0_BASE 0x40000000u
#define TIMER0_CTRL MPS2_REG(TIMER0_BASE + 0x00u)   /* b0 enable, b3 interrupt enable */
#define TIMER0_VALUE MPS2_REG(TIMER0_BASE + 0x04u)
#define TIMER0_RELOAD MPS2_REG(TIMER0_BASE + 0x08u)
#define TIMER0_INTCLR MPS2_REG(TIMER0_BASE + 0x0Cu) /* read: status; write 1: clear */
#define TIMER_CTRL_EN 0x1u
#define TIMER_CTRL_IRQEN 0x8u
#define TIMER0_IRQ 8
/* -icount shift=0: one instruction = 1 ns of virtual time, one 25 MHz tick = 40 instructions */
#define TIMER_INSTRUCTIONS_PER_TICK 40u

/* ---- Cortex-M7 system control ---- */
#define SCB_AIRCR MPS2_REG(0xE000ED0Cu)
#define SCB_AIRCR_SYSRESETREQ (0x05FA0000u | 0x4u)
#define NVIC_ISER0 MPS2_REG(0xE000E100u)
#define NVIC_ISPR0 MPS2_REG(0xE000E200u)
#define NVIC_ICPR0 MPS2_REG(0xE000E280u)

/* ---- memory layout (docs/firmware.md, "Flash layout") ----
 * The 1 MB "flash" is the F746-sized window at the bottom of QEMU's SSRAM1 (RAM to QEMU), with
 * the F746's sector map: sectors 0-3 of 32 KB, 4 of 128 KB, 5-7 of 256 KB. The firmware image
 * owns sectors 0-2, the storage flash (tb_port_flash()) is sectors 3-7. */
#define QEMU_FLASH_BASE 0x00000000u
#define QEMU_FLASH_BYTES 0x00100000u
#define QEMU_STORAGE_BASE 0x00018000u  /* sector 3 */
#define QEMU_STORAGE_BYTES 0x000E8000u
/* The storage sectors' starts, offsets into the storage flash (sector 3 starts at 0); the store
 * (device/store.h) puts checkpoints in sectors 3-4, shares sector 5, model slots A, B in 6, 7. */
#define QEMU_SECTOR4_OFFSET 0x00008000u
#define QEMU_SECTOR5_OFFSET 0x00028000u
#define QEMU_SECTOR6_OFFSET 0x00068000u
#define QEMU_SECTOR7_OFFSET 0x000A8000u
/* QEMU only, outside the F746's map: the build-time preload image (a model baked into the
 * firmware ELF, copied into the storage flash when QEMU powers on) ... */
#define QEMU_PRELOAD_BASE 0x00100000u
#define QEMU_PRELOAD_MAGIC 0x4C504254u /* "TBPL" */
/* ... and a few words of RAM past the 320 KB that neither the ELF loader nor the startup code
 * touches, so they survive a reset (the F746 has backup SRAM for this): the flash format marker,
 * the boot counter, the last fault; the launcher writes a per-run random seed at SEED. */
#define QEMU_NOINIT_BASE 0x20050000u
#define QEMU_SEED_ADDR 0x20050020u

/* ---- the firmware's board functions (port.c), called by main.c ---- */
void board_init(void);        /* storage flash at power-on, UART, counter, interrupts */
void board_paint_stack(void); /* for tb_port_stack_high_water() */
/* 1 and the details if the previous boot ended in a fault (then forgotten), else 0 */
int board_last_fault(uint32_t *pc, uint32_t *status, uint32_t *code);

#endif
