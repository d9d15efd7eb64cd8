/* Frames on the wire (docs/protocol.md): COBS(body) 0x00, body = header | payload | CRC-32. */
#ifndef TB_FRAME_H
#define TB_FRAME_H
#include <stddef.h>
#include <stdint.h>

enum {
    TB_PROTOCOL_VERSION = 1,
    TB_HEADER_BYTES = 8,
    TB_CRC_BYTES = 4,
    TB_MAX_PAYLOAD = 2048,
    TB_MIN_BODY = TB_HEADER_BYTES + TB_CRC_BYTES,
    TB_MAX_BODY = TB_HEADER_BYTES + TB_MAX_PAYLOAD + TB_CRC_BYTES
};

/* CRC-32/ISO-HDLC, chainable like Python's binascii.crc32(data, crc): start with 0. */
uint32_t tb_crc32(uint32_t crc, const uint8_t *data, size_t len);

/* Streaming COBS decoder. A 0x00 ends a frame; a frame that does not decode, or decodes to more
 * than TB_MAX_BODY bytes, is reported bad and the decoder resynchronises at the next 0x00. */
typedef struct {
    uint8_t body[TB_MAX_BODY];
    uint32_t len;
    uint8_t block_left;   /* data bytes still to come in the current COBS block */
    uint8_t zero_pending; /* the current block ends with an implied 0x00 (code < 0xFF) */
    uint8_t started;
    uint8_t bad;
} tb_decoder;

enum { TB_DECODE_NONE = 0, TB_DECODE_BAD = -1 };

void tb_decoder_init(tb_decoder *d);
/* TB_DECODE_NONE, TB_DECODE_BAD, or the length of the body now complete in d->body. */
int32_t tb_decoder_push(tb_decoder *d, uint8_t byte);

/* Writes COBS(body) 0x00 through `write`, one COBS block per call. */
void tb_cobs_write(const uint8_t *body, size_t len, void (*write)(const uint8_t *, size_t));

#endif
