/* The board interface: everything the runtime core needs from a target, and nothing more.
 * A board (boards/<name>/) implements these functions and describes itself with a tb_board.
 * The core calls them from one thread; none of them is called from an interrupt. */
#ifndef TB_PORT_H
#define TB_PORT_H
#include <stddef.h>
#include <stdint.h>

/* HELLO.counter_unit: what tb_port_counter() counts. */
enum { TB_COUNTER_INSTRUCTIONS = 0, TB_COUNTER_CYCLES = 1, TB_COUNTER_NANOSECONDS = 2 };

typedef struct {
    const char *name;           /* HELLO.board */
    uint8_t counter_unit;       /* TB_COUNTER_* */
    uint8_t window;             /* XFER_DATA frames the board buffers while the core is busy */
    /* The storage flash, memory-mapped at tb_port_flash(): the erase sectors after the firmware's.
     * sector_start[i] is sector i's offset (sector_start[0] = 0), sector_start[sector_count] the
     * storage size. The store (device/store.h) derives its slots from them: the last two sectors
     * are model slots A and B, the one before them is shared, the ones before that (at least two)
     * hold the checkpoints. */
    uint8_t sector_count;
    const uint32_t *sector_start;
} tb_board;

const tb_board *tb_port_board(void);

/* Link. read: the bytes available now (0: none), never blocks. wait_input: sleeps until a byte
 * may be available. write: returns when the bytes are queued for sending. */
size_t tb_port_read(uint8_t *buf, size_t cap);
void tb_port_wait_input(void);
void tb_port_write(const uint8_t *data, size_t len);

/* Flash with NOR semantics: erase sets every byte of each erase block that intersects
 * [offset, offset + len) to 0xFF; program clears bits only. Both return 0 on success. */
const uint8_t *tb_port_flash(void);
int tb_port_flash_erase(uint32_t offset, uint32_t len);
int tb_port_flash_program(uint32_t offset, const uint8_t *data, uint32_t len);

uint64_t tb_port_counter(void);          /* free-running, in tb_board.counter_unit */
uint32_t tb_port_entropy(void);          /* differs between boots: the boot id */
uint32_t tb_port_stack_high_water(void); /* bytes of stack ever used */

/* Both send everything queued before they act. */
void tb_port_reset(void);                /* does not return; the runtime boots afresh */
int tb_port_baud_supported(uint32_t baud);
void tb_port_set_baud(uint32_t baud);

#endif
