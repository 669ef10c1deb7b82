/* The Mooncake conversation JSONL reader (rows, hash ids, prefix cache) from hostile bytes. */
#include "fuzz_trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_trace(TRACE_MOONCAKE, data, size);
    return 0;
}
