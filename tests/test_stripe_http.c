/* Form encoding and key redaction of the Stripe client (engine/lib/stripe_http.c). */
#include <criterion/criterion.h>
#include <string.h>

#include "common/status.h"
#include "engine/lib/stripe_http.h"

Test(stripe_form, brackets_and_reserved_characters_encoded)
{
    struct stripe_form form = { 0 };
    cr_assert_eq(stripe_form_add(&form, "metadata[invoice_number]", "HM-000001"), HM_OK);
    cr_assert_eq(stripe_form_add(&form, "description", "GPU usage, H100 & A100 = 5%"), HM_OK);
    cr_assert_str_eq(form.text, "metadata%5Binvoice_number%5D=HM-000001&description=GPU%20usage%2C"
                                "%20H100%20%26%20A100%20%3D%205%25");
    stripe_form_free(&form);
}

Test(stripe_redact, key_replaced_everywhere)
{
    const char *key = "sk_test_abc123";
    const char *text = "key sk_test_abc123 and again sk_test_abc123.";
    char out[256];
    stripe_redact(text, strlen(text), key, out, sizeof out);
    cr_assert_str_eq(out, "key [REDACTED] and again [REDACTED].");
}

Test(stripe_redact, bearer_token_replaced_even_when_not_the_key)
{
    const char *text = "Authorization: Bearer sk_live_other\r\n";
    char out[256];
    stripe_redact(text, strlen(text), "sk_test_abc123", out, sizeof out);
    cr_assert_str_eq(out, "Authorization: Bearer [REDACTED]  ");
    cr_assert_null(strstr(out, "sk_live_other"));
}

Test(stripe_redact, truncated_output_never_holds_part_of_the_key)
{
    const char *key = "sk_test_0123456789";
    const char *text = "Authorization: Bearer sk_test_0123456789";
    char out[26];
    stripe_redact(text, strlen(text), key, out, sizeof out);
    cr_assert_eq(strlen(out), sizeof out - 1);
    cr_assert_null(strstr(out, "sk_test"));
}

Test(stripe_client, plain_http_only_on_loopback)
{
    struct stripe_client_options options;
    stripe_client_options_default(&options);
    options.api_key = "sk_test_abc";
    char error[512] = "";
    struct stripe_client *client = NULL;
    options.api_base = "http://api.stripe.com";
    cr_assert_eq(stripe_client_open(&client, &options, error, sizeof error), HM_ERR_INVALID);
    cr_assert_not_null(strstr(error, "\"http://api.stripe.com\""));
    options.api_base = "http://127.0.0.1.example.com";
    cr_assert_eq(stripe_client_open(&client, &options, error, sizeof error), HM_ERR_INVALID);
    options.api_base = "http://127.0.0.1:8080";
    cr_assert_eq(stripe_client_open(&client, &options, error, sizeof error), HM_OK);
    stripe_client_close(client);
}
