/* The Azure LLM inference CSV reader (header, rows, timestamps) from hostile bytes. */
#include "fuzz_trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_trace(TRACE_AZURE_CONV, data, size);
    return 0;
}
