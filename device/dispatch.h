/* Request dispatch: one request frame in, one response frame out; log and event frames. */
#ifndef TB_DISPATCH_H
#define TB_DISPATCH_H
#include <stdint.h>

/* A request being served: its payload, and the response payload being built. */
typedef struct {
    const uint8_t *in;
    uint32_t in_len;
    uint8_t *out;
    uint32_t out_len;
} tb_call;

/* Appends a formatted message (at most TB_MESSAGE_MAX bytes) to the response; returns code. */
int tb_fail(tb_call *c, int code, const char *fmt, ...);
enum { TB_MESSAGE_MAX = 120 };
/* TB_OK, or NO_MODEL with its message. */
int tb_need_model(tb_call *c);

/* Serves one decoded frame body (header | payload | crc); bad frames are counted and dropped. */
void tb_dispatch(const uint8_t *body, uint32_t len);

void tb_log(int level, const char *fmt, ...);
void tb_send_boot_event(void);

/* Little-endian fields. */
uint16_t tb_get_u16(const uint8_t *p);
uint32_t tb_get_u32(const uint8_t *p);
void tb_put_u16(tb_call *c, uint16_t v);
void tb_put_u32(tb_call *c, uint32_t v);
void tb_put_f32(tb_call *c, float v);
void tb_put_bytes(tb_call *c, const void *data, uint32_t len);

#endif
