/*
 * HTTPS client of the Stripe API (libcurl with OpenSSL): form-encoded
 * requests with idempotency keys, timeouts, a request rate limit and
 * retries with exponential backoff and jitter.
 *
 * The API key is held only in the client and in the Authorization header
 * that libcurl sends. It is never logged: debug output of headers goes
 * through a filter that replaces the key with "[REDACTED]".
 *
 * Threads: one client per thread.
 */
#ifndef HM_ENGINE_STRIPE_HTTP_H
#define HM_ENGINE_STRIPE_HTTP_H

#include <jansson.h>
#include <stddef.h>

/* The Stripe-Version header: the API version that the exporter's requests follow. */
#define STRIPE_API_VERSION "2026-07-29.dahlia"
#define STRIPE_API_BASE_DEFAULT "https://api.stripe.com"
/* Stripe's test mode allows 25 requests per second: stay below it by default. */
#define STRIPE_RATE_DEFAULT 20
#define STRIPE_RATE_MAX 1000
#define STRIPE_TIMEOUT_S_DEFAULT 30
#define STRIPE_TIMEOUT_S_MAX 600
#define STRIPE_RETRIES_DEFAULT 6
#define STRIPE_RETRIES_MAX 20
/* A Retry-After longer than this is cut to it, so that one reply cannot stall an export. */
#define STRIPE_RETRY_AFTER_MAX_MS 60000
/* Room for the longest key Stripe issues (restricted keys are about 110 characters). */
#define STRIPE_API_KEY_MAX 255

struct stripe_client_options {
    const char *api_base;   /* "https://api.stripe.com", or http:// on a loopback host */
    const char *ca_file;    /* PEM bundle to verify the server with; NULL: the system store */
    const char *api_key;    /* copied by stripe_client_open */
    long timeout_ms;        /* whole request, connect included */
    unsigned max_retries;   /* retries after the first attempt */
    unsigned rate_per_second;
    long retry_base_ms;     /* first backoff; doubles per retry up to retry_max_ms */
    long retry_max_ms;
};

/* Fills the defaults above: Stripe's API, 20 requests/s, 30 s, 6 retries from 500 ms to 8 s. */
void stripe_client_options_default(struct stripe_client_options *options);

struct stripe_client;

/*
 * Creates a client. Returns HM_OK, HM_ERR_INVALID (with the reason in
 * `error`) for an api_base that is neither https:// nor http:// on
 * 127.0.0.1, [::1] or localhost (the host as libcurl parses it), that has
 * user info, a query or a fragment, or for a key that is empty or too long,
 * or HM_ERR_NOMEM. Free it with stripe_client_close, which wipes the key.
 */
int stripe_client_open(struct stripe_client **out, const struct stripe_client_options *options,
                       char *error, size_t error_size);
void stripe_client_close(struct stripe_client *client);

/* A form-encoded request body: key=value pairs with keys like metadata[invoice_number]. */
struct stripe_form {
    char *text;
    size_t size;
    size_t capacity;
};

/* Appends key=value, percent-encoded. Returns HM_OK or HM_ERR_NOMEM. */
int stripe_form_add(struct stripe_form *form, const char *key, const char *value);
void stripe_form_free(struct stripe_form *form);

struct stripe_response {
    long status;           /* HTTP status of the last attempt; 0 when none arrived */
    json_t *body;          /* parsed JSON body, or NULL; the caller releases it */
    char request_id[80];   /* Request-Id header, or empty */
    unsigned attempts;     /* requests sent, retries included */
    int replayed;          /* 1 when the server replayed a stored idempotent result */
};

/*
 * Sends `method` (GET, POST or DELETE) `path` (such as "/v1/invoiceitems")
 * with the form as its body (NULL for none) and the Idempotency-Key
 * `idempotency_key` (NULL for none, as for GET and DELETE). Retries on a
 * timeout, a refused or dropped connection, HTTP 409, 429 and 5xx, unless
 * the reply carries
 * "Stripe-Should-Retry: false"; "Stripe-Should-Retry: true" makes any
 * status retried. The wait before retry n (1, 2, ...) is a random time
 * between half of and the full min(retry_max_ms, retry_base_ms * 2^(n-1)),
 * and at least the reply's Retry-After (capped at 60 s).
 *
 * Returns HM_OK for a 2xx reply with a JSON body, HM_ERR_INVALID for a
 * 4xx reply that is not retried (Stripe rejected the request), or HM_ERR_IO
 * when the retries ran out or the reply was not JSON. On error `error`
 * names the request, the status, Stripe's error type, code and message,
 * and the request id. *out is filled in every case; release it with
 * stripe_response_free.
 */
int stripe_request(struct stripe_client *client, const char *method, const char *path,
                   const struct stripe_form *form, const char *idempotency_key,
                   struct stripe_response *out, char *error, size_t error_size);
void stripe_response_free(struct stripe_response *response);

/*
 * Copies `text` into `out` with every occurrence of `secret` replaced by
 * "[REDACTED]", and the token after every "Bearer " too. Used for every
 * line of debug output.
 */
void stripe_redact(const char *text, size_t text_size, const char *secret, char *out,
                   size_t out_size);

#endif
