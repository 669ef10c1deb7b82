/* Form encoding and key redaction of the Stripe client (engine/lib/stripe_http.c). */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <stdio.h>
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

/* The host that libcurl connects to for `url`, or "" when it cannot parse it. */
static void curl_host(const char *url, char *out, size_t size)
{
    CURLU *parsed = curl_url();
    char *host = NULL;
    out[0] = '\0';
    if (curl_url_set(parsed, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(parsed, CURLUPART_HOST, &host, 0) == CURLUE_OK)
        snprintf(out, size, "%s", host);
    curl_free(host);
    curl_url_cleanup(parsed);
}

/*
 * URLs whose first characters name a loopback host while libcurl would connect elsewhere. The
 * client must refuse each before it sends anything; the test only parses them, it connects to
 * nothing.
 */
Test(stripe_client, loopback_prefix_with_another_host_refused)
{
    static const char *const urls[] = {
        "http://127.0.0.1:x@attacker.example/",
        "http://localhost:1@attacker.example:8080",
        "http://[::1]@attacker.example",
        "http://127.0.0.1@attacker.example",
    };
    struct stripe_client_options options;
    stripe_client_options_default(&options);
    options.api_key = "sk_test_abc";
    for (size_t i = 0; i < sizeof urls / sizeof *urls; i++) {
        char host[256];
        curl_host(urls[i], host, sizeof host);
        cr_assert_str_eq(host, "attacker.example", "libcurl parses %s as host %s", urls[i], host);
        char error[512] = "";
        struct stripe_client *client = NULL;
        options.api_base = urls[i];
        cr_assert_eq(stripe_client_open(&client, &options, error, sizeof error), HM_ERR_INVALID,
                     "%s accepted", urls[i]);
        cr_assert_null(client);
        cr_assert_not_null(strstr(error, "user name or password"), "%s: %s", urls[i], error);
        /* The user info may be a password: the error does not repeat it. */
        cr_assert_null(strstr(error, "attacker.example"), "%s", error);
    }
}

Test(stripe_client, user_info_query_and_fragment_refused_on_https_too)
{
    static const struct {
        const char *url;
        const char *reason;
    } cases[] = {
        { "https://user:secret@api.stripe.com", "user name or password" },
        { "https://api.stripe.com@attacker.example", "user name or password" },
        { "https://api.stripe.com?x=1", "query" },
        { "https://api.stripe.com#v1", "fragment" },
        { "http://127.0.0.1:8080/?a", "query" },
        { "ftp://127.0.0.1", "clear text" },
        { "127.0.0.1:8080", "not a URL" },
        { "http://127.0.0.1.attacker.example", "clear text" },
    };
    struct stripe_client_options options;
    stripe_client_options_default(&options);
    options.api_key = "sk_test_abc";
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char error[512] = "";
        struct stripe_client *client = NULL;
        options.api_base = cases[i].url;
        cr_assert_eq(stripe_client_open(&client, &options, error, sizeof error), HM_ERR_INVALID,
                     "%s accepted", cases[i].url);
        cr_assert_not_null(strstr(error, cases[i].reason), "%s: %s", cases[i].url, error);
        cr_assert_null(strstr(error, "secret"), "%s", error);
    }
    static const char *const allowed[] = { "https://api.stripe.com", "https://api.stripe.com/",
                                           "http://localhost:9", "http://[::1]:9/",
                                           "HTTP://LOCALHOST:9" };
    for (size_t i = 0; i < sizeof allowed / sizeof *allowed; i++) {
        char error[512] = "";
        struct stripe_client *client = NULL;
        options.api_base = allowed[i];
        cr_assert_eq(stripe_client_open(&client, &options, error, sizeof error), HM_OK, "%s: %s",
                     allowed[i], error);
        stripe_client_close(client);
    }
}
