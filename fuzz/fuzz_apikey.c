/*
 * API keys and the identifiers around them from hostile text: apikey_parse,
 * uuid_parse and hex_decode. What parses must format back to the same text
 * (keys and UUIDs without regard to case).
 */
#include "fuzz_common.h"

#include "common/status.h"
#include "common/uuid.h"
#include "ingest/apikey.h"

#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *text = fuzz_string(data, size);

    struct apikey key;
    if (apikey_parse(text, &key) == HM_OK) {
        char formatted[APIKEY_TEXT_SIZE];
        apikey_format(&key, formatted);
        FUZZ_CHECK(strcasecmp(formatted, text) == 0, "key does not format back to its text");
    }

    uint8_t id[UUID_SIZE];
    if (uuid_parse(text, id) == HM_OK) {
        char formatted[UUID_TEXT_SIZE];
        uuid_format(id, formatted);
        FUZZ_CHECK(strcasecmp(formatted, text) == 0, "UUID does not format back to its text");
    }

    uint8_t bytes[2048];
    size_t length = strlen(text);
    if (length % 2 == 0 && hex_decode(text, bytes, length / 2) == HM_OK) {
        char formatted[4097];
        hex_encode(bytes, length / 2, formatted);
        FUZZ_CHECK(strcasecmp(formatted, text) == 0, "hex does not format back to its text");
    }
    free(text);
    return 0;
}
