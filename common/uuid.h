/* UUIDs as 16 raw bytes, with the canonical 36-character text form. */
#ifndef HM_UUID_H
#define HM_UUID_H

#include <stddef.h>
#include <stdint.h>

#define UUID_SIZE 16
#define UUID_TEXT_SIZE 37 /* 36 characters and the terminating NUL */

/* Parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (either case); returns HM_ERR_INVALID otherwise. */
int uuid_parse(const char *text, uint8_t out[UUID_SIZE]);

/* Writes the lowercase canonical form into out. */
void uuid_format(const uint8_t id[UUID_SIZE], char out[UUID_TEXT_SIZE]);

/* Fills id with a random version 4 UUID from the kernel's CSPRNG; returns HM_ERR_IO on failure. */
int uuid_random(uint8_t id[UUID_SIZE]);

/*
 * Derives a name-based UUID: the first 16 bytes of SHA-256(namespace || name)
 * with the version nibble set to 8 (RFC 9562 custom) and the RFC variant bits.
 */
void uuid_from_name(const uint8_t namespace_id[UUID_SIZE], const char *name,
                    uint8_t out[UUID_SIZE]);

/* Parses and formats lowercase hex; hex_decode returns HM_ERR_INVALID on a bad digit. */
int hex_decode(const char *text, uint8_t *out, size_t size);
void hex_encode(const uint8_t *bytes, size_t size, char *out);

#endif
