/*
 * Decimal amounts and prices from hostile text: money_decimal_parse, as
 * price books and the command line use it, and billing_amount_parse for
 * amounts of credit grants and credit notes in currencies with 0, 2 and 3
 * minor digits.
 */
#include "fuzz_common.h"

#include "common/status.h"
#include "engine/lib/billing.h"
#include "pricing/money.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 256)
        return 0;
    char *text = fuzz_string(data, size);
    char error[512];

    __int128 pico = 0;
    int rc = money_decimal_parse(text, &pico, error, sizeof error);
    FUZZ_CHECK(rc == HM_OK || error[0] != '\0', "a rejected decimal without an error message");

    static const char *const codes[] = { "USD", "JPY", "KWD" };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const struct money_currency *currency = NULL;
        if (money_currency_find(codes[i], &currency) != HM_OK)
            continue;
        int64_t minor = 0;
        error[0] = '\0';
        rc = billing_amount_parse(text, currency, &minor, error, sizeof error);
        FUZZ_CHECK(rc == HM_OK || error[0] != '\0', "a rejected amount without an error message");
        FUZZ_CHECK(rc != HM_OK || minor > 0, "amount %s parsed as %lld", text, (long long)minor);
    }
    free(text);
    return 0;
}
