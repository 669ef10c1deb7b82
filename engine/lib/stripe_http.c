#include "engine/lib/stripe_http.h"

#include "common/log.h"
#include "common/status.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* A reply larger than this is not an invoice or an invoice item; it is cut off as an error. */
#define RESPONSE_SIZE_MAX ((size_t)8 << 20)
#define DEBUG_LINE_MAX 2048

struct stripe_client {
    CURL *curl;
    struct curl_slist *auth_header; /* "Authorization: Bearer <key>" */
    char api_base[512];
    char ca_file[4096];
    char api_key[STRIPE_API_KEY_MAX + 1];
    long timeout_ms;
    unsigned max_retries;
    int64_t interval_ns;  /* minimum time between two request starts */
    int64_t next_start_ns;
    long retry_base_ms;
    long retry_max_ms;
};

/* What one attempt received, filled by the libcurl callbacks. */
struct attempt {
    char *body;
    size_t body_size;
    int too_large;
    long retry_after_ms; /* -1: no Retry-After header */
    int should_retry;    /* -1: no Stripe-Should-Retry header, else 0 or 1 */
    int replayed;
    char request_id[80];
    char curl_error[CURL_ERROR_SIZE]; /* libcurl's detailed message of a failed transfer */
};

void stripe_client_options_default(struct stripe_client_options *options)
{
    memset(options, 0, sizeof *options);
    options->api_base = STRIPE_API_BASE_DEFAULT;
    options->timeout_ms = STRIPE_TIMEOUT_S_DEFAULT * 1000L;
    options->max_retries = STRIPE_RETRIES_DEFAULT;
    options->rate_per_second = STRIPE_RATE_DEFAULT;
    options->retry_base_ms = 500;
    options->retry_max_ms = 8000;
}

static int64_t monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static void sleep_ns(int64_t duration_ns)
{
    if (duration_ns <= 0)
        return;
    struct timespec wait = { .tv_sec = duration_ns / 1000000000,
                             .tv_nsec = duration_ns % 1000000000 };
    while (nanosleep(&wait, &wait) != 0 && errno == EINTR) {
    }
}

/*
 * The API key goes only over TLS, or to this machine for tests against a local server. The URL
 * is parsed by libcurl, as the request will be, so that the host checked is the host connected
 * to: "http://127.0.0.1:x@example.com" has the user info "127.0.0.1:x" and the host example.com.
 * User info, a query or a fragment has no place in an API base and is refused on any scheme.
 * Returns NULL when the URL is allowed, else the reason.
 */
static const char *api_base_problem(const char *base)
{
    CURLU *url = curl_url();
    if (url == NULL)
        return "out of memory";
    const char *problem = NULL;
    char *scheme = NULL, *host = NULL;
    if (curl_url_set(url, CURLUPART_URL, base, 0) != CURLUE_OK ||
        curl_url_get(url, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(url, CURLUPART_HOST, &host, 0) != CURLUE_OK || host[0] == '\0') {
        problem = "it is not a URL that libcurl can parse";
    } else {
        static const CURLUPart forbidden[] = { CURLUPART_USER, CURLUPART_PASSWORD,
                                               CURLUPART_OPTIONS, CURLUPART_QUERY,
                                               CURLUPART_FRAGMENT };
        for (size_t i = 0; i < sizeof forbidden / sizeof *forbidden && problem == NULL; i++) {
            char *part = NULL;
            if (curl_url_get(url, forbidden[i], &part, 0) == CURLUE_OK && part != NULL)
                problem = forbidden[i] == CURLUPART_QUERY      ? "it has a query (?...)"
                          : forbidden[i] == CURLUPART_FRAGMENT ? "it has a fragment (#...)"
                                                               : "it has a user name or "
                                                                 "password (text before '@')";
            curl_free(part);
        }
        int loopback = strcmp(host, "127.0.0.1") == 0 || strcmp(host, "[::1]") == 0 ||
                       strcasecmp(host, "localhost") == 0;
        if (problem == NULL && strcmp(scheme, "https") != 0 &&
            !(strcmp(scheme, "http") == 0 && loopback))
            problem = "the key would be sent in clear text";
    }
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(url);
    return problem;
}

int stripe_client_open(struct stripe_client **out, const struct stripe_client_options *options,
                       char *error, size_t error_size)
{
    const char *problem = api_base_problem(options->api_base);
    if (problem != NULL) {
        /* A user info part may hold a password: the URL is then not repeated. */
        int secret = strstr(problem, "password") != NULL;
        snprintf(error, error_size, "invalid --api-base%s%s%s: %s; give an https:// URL without "
                 "user info, query or fragment, such as https://api.stripe.com (http:// only on "
                 "127.0.0.1, [::1] or localhost), so that the API key goes to that host only "
                 "and never in clear text", secret ? "" : " \"", secret ? "" : options->api_base,
                 secret ? "" : "\"", problem);
        return HM_ERR_INVALID;
    }
    if (strlen(options->api_base) >= sizeof((struct stripe_client *)0)->api_base) {
        snprintf(error, error_size, "invalid --api-base: longer than 511 bytes");
        return HM_ERR_INVALID;
    }
    size_t key_size = options->api_key ? strlen(options->api_key) : 0;
    if (key_size == 0 || key_size > STRIPE_API_KEY_MAX) {
        snprintf(error, error_size, "the Stripe API key is %s; give the secret key (sk_...) or "
                 "a restricted key (rk_...)", key_size == 0 ? "empty" : "too long");
        return HM_ERR_INVALID;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(error, error_size, "cannot initialize libcurl");
        return HM_ERR_IO;
    }
    struct stripe_client *client = calloc(1, sizeof *client);
    if (client == NULL)
        return HM_ERR_NOMEM;
    snprintf(client->api_base, sizeof client->api_base, "%s", options->api_base);
    /* A trailing slash would make "//v1/..." paths. */
    size_t base_size = strlen(client->api_base);
    while (base_size > 0 && client->api_base[base_size - 1] == '/')
        client->api_base[--base_size] = '\0';
    if (options->ca_file)
        snprintf(client->ca_file, sizeof client->ca_file, "%s", options->ca_file);
    memcpy(client->api_key, options->api_key, key_size + 1);
    client->timeout_ms = options->timeout_ms;
    client->max_retries = options->max_retries;
    unsigned rate = options->rate_per_second ? options->rate_per_second : STRIPE_RATE_DEFAULT;
    client->interval_ns = 1000000000 / (int64_t)rate;
    client->retry_base_ms = options->retry_base_ms;
    client->retry_max_ms = options->retry_max_ms;

    char header[STRIPE_API_KEY_MAX + 32];
    snprintf(header, sizeof header, "Authorization: Bearer %s", client->api_key);
    client->auth_header = curl_slist_append(NULL, header);
    explicit_bzero(header, sizeof header);
    client->curl = curl_easy_init();
    if (client->auth_header == NULL || client->curl == NULL) {
        stripe_client_close(client);
        return HM_ERR_NOMEM;
    }
    *out = client;
    return HM_OK;
}

void stripe_client_close(struct stripe_client *client)
{
    if (client == NULL)
        return;
    if (client->curl)
        curl_easy_cleanup(client->curl);
    /* libcurl keeps the header text in the list's own copy: wipe it before freeing. */
    for (struct curl_slist *item = client->auth_header; item != NULL; item = item->next)
        explicit_bzero(item->data, strlen(item->data));
    curl_slist_free_all(client->auth_header);
    explicit_bzero(client->api_key, sizeof client->api_key);
    free(client);
}

/* ---- Form bodies ---- */

static int form_append(struct stripe_form *form, const char *text, size_t size)
{
    if (form->size + size + 1 > form->capacity) {
        size_t capacity = form->capacity ? form->capacity : 256;
        while (capacity < form->size + size + 1)
            capacity *= 2;
        char *grown = realloc(form->text, capacity);
        if (grown == NULL)
            return HM_ERR_NOMEM;
        form->text = grown;
        form->capacity = capacity;
    }
    memcpy(form->text + form->size, text, size);
    form->size += size;
    form->text[form->size] = '\0';
    return HM_OK;
}

/* Percent-encodes everything but the unreserved characters of RFC 3986. */
static int form_append_encoded(struct stripe_form *form, const char *text)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *c = (const unsigned char *)text; *c != '\0'; c++) {
        int unreserved = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                         (*c >= '0' && *c <= '9') || *c == '-' || *c == '.' || *c == '_' ||
                         *c == '~';
        char encoded[3] = { '%', hex[*c >> 4], hex[*c & 15] };
        int rc = unreserved ? form_append(form, (const char *)c, 1)
                            : form_append(form, encoded, 3);
        if (rc != HM_OK)
            return rc;
    }
    return HM_OK;
}

int stripe_form_add(struct stripe_form *form, const char *key, const char *value)
{
    int rc = form->size > 0 ? form_append(form, "&", 1) : HM_OK;
    if (rc == HM_OK)
        rc = form_append_encoded(form, key);
    if (rc == HM_OK)
        rc = form_append(form, "=", 1);
    if (rc == HM_OK)
        rc = form_append_encoded(form, value);
    return rc;
}

void stripe_form_free(struct stripe_form *form)
{
    free(form->text);
    memset(form, 0, sizeof *form);
}

/* ---- Redaction ---- */

void stripe_redact(const char *text, size_t text_size, const char *secret, char *out,
                   size_t out_size)
{
    static const char marker[] = "[REDACTED]";
    size_t secret_size = secret ? strlen(secret) : 0;
    size_t used = 0;
    size_t i = 0;
    while (i < text_size && used + 1 < out_size) {
        if (secret_size > 0 && text_size - i >= secret_size &&
            memcmp(text + i, secret, secret_size) == 0) {
            size_t copy = sizeof marker - 1 < out_size - used - 1 ? sizeof marker - 1
                                                                   : out_size - used - 1;
            memcpy(out + used, marker, copy);
            used += copy;
            i += secret_size;
            continue;
        }
        /* Whatever follows "Bearer " is a credential, even one that is not this client's key. */
        if (text_size - i >= 7 && strncasecmp(text + i, "Bearer ", 7) == 0) {
            size_t copy = 7 < out_size - used - 1 ? 7 : out_size - used - 1;
            memcpy(out + used, text + i, copy);
            used += copy;
            i += 7;
            while (i < text_size && text[i] != '\r' && text[i] != '\n' && text[i] != ' ')
                i++;
            copy = sizeof marker - 1 < out_size - used - 1 ? sizeof marker - 1
                                                          : out_size - used - 1;
            memcpy(out + used, marker, copy);
            used += copy;
            continue;
        }
        char c = text[i++];
        out[used++] = (c == '\r' || c == '\n' || (unsigned char)c < 0x20) ? ' ' : c;
    }
    out[used < out_size ? used : out_size - 1] = '\0';
}

/* ---- libcurl callbacks ---- */

static size_t on_body(char *data, size_t size, size_t count, void *context)
{
    struct attempt *attempt = context;
    size_t bytes = size * count;
    if (attempt->body_size + bytes > RESPONSE_SIZE_MAX) {
        attempt->too_large = 1;
        return 0;
    }
    char *grown = realloc(attempt->body, attempt->body_size + bytes + 1);
    if (grown == NULL)
        return 0;
    memcpy(grown + attempt->body_size, data, bytes);
    attempt->body = grown;
    attempt->body_size += bytes;
    attempt->body[attempt->body_size] = '\0';
    return bytes;
}

/* Returns the header's value when `line` is "name: value", else NULL; value ends at CR/LF. */
static const char *header_value(const char *line, size_t size, const char *name,
                                char *value, size_t value_size)
{
    size_t name_size = strlen(name);
    if (size <= name_size + 1 || strncasecmp(line, name, name_size) != 0 ||
        line[name_size] != ':')
        return NULL;
    const char *start = line + name_size + 1;
    const char *end = line + size;
    while (start < end && (*start == ' ' || *start == '\t'))
        start++;
    while (end > start && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    snprintf(value, value_size, "%.*s", (int)(end - start), start);
    return value;
}

static size_t on_header(char *line, size_t size, size_t count, void *context)
{
    struct attempt *attempt = context;
    size_t bytes = size * count;
    char value[128];
    if (header_value(line, bytes, "Retry-After", value, sizeof value)) {
        /* Only delta-seconds; an HTTP date is rare from Stripe and falls back to the backoff. */
        char *end = NULL;
        long seconds = strtol(value, &end, 10);
        if (end != value && *end == '\0' && seconds >= 0)
            attempt->retry_after_ms = seconds > STRIPE_RETRY_AFTER_MAX_MS / 1000
                                          ? STRIPE_RETRY_AFTER_MAX_MS
                                          : seconds * 1000;
    } else if (header_value(line, bytes, "Stripe-Should-Retry", value, sizeof value)) {
        attempt->should_retry = strcasecmp(value, "true") == 0    ? 1
                                : strcasecmp(value, "false") == 0 ? 0
                                                                  : -1;
    } else if (header_value(line, bytes, "Idempotent-Replayed", value, sizeof value)) {
        attempt->replayed = strcasecmp(value, "true") == 0;
    } else if (header_value(line, bytes, "Request-Id", value, sizeof value)) {
        snprintf(attempt->request_id, sizeof attempt->request_id, "%.79s", value);
    }
    return bytes;
}

/* Logs libcurl's trace of headers and connection events with the key redacted. */
static int on_debug(CURL *curl, curl_infotype type, char *data, size_t size, void *context)
{
    (void)curl;
    const struct stripe_client *client = context;
    const char *direction = type == CURLINFO_HEADER_OUT  ? ">"
                            : type == CURLINFO_HEADER_IN ? "<"
                            : type == CURLINFO_TEXT      ? "*"
                                                         : NULL;
    if (direction == NULL) {
        /* Bodies carry customer ids and metadata: their size is enough to debug with. */
        if (type == CURLINFO_DATA_OUT || type == CURLINFO_DATA_IN)
            log_debug("stripe", "%s body bytes=%zu", type == CURLINFO_DATA_OUT ? ">" : "<", size);
        return 0;
    }
    /* A block of headers holds several lines: log each on its own. */
    size_t start = 0;
    while (start < size) {
        size_t end = start;
        while (end < size && data[end] != '\n')
            end++;
        if (end > start + 1 || (end > start && data[start] != '\r')) {
            char line[DEBUG_LINE_MAX];
            stripe_redact(data + start, end - start, client->api_key, line, sizeof line);
            log_debug("stripe", "%s %s", direction, line);
        }
        start = end + 1;
    }
    return 0;
}

/* ---- Requests ---- */

static int transport_error_retryable(CURLcode code)
{
    switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
        return 1;
    default:
        return 0; /* a certificate that fails verification, a bad URL: retrying cannot help */
    }
}

/*
 * The fix for a certificate that failed verification, from libcurl's text of the
 * verification result: only an unknown issuer is fixed by --ca-file.
 */
static const char *certificate_hint(CURLcode code, const char *text)
{
    if (code == CURLE_SSL_CACERT_BADFILE)
        return "; the CA file cannot be read as PEM certificates: give a PEM bundle with "
               "--ca-file FILE";
    if (code != CURLE_PEER_FAILED_VERIFICATION)
        return "";
    if (strstr(text, "has expired") != NULL)
        return "; the server's certificate has expired: renew it on the server (a CA file "
               "cannot make an expired certificate valid)";
    if (strstr(text, "not yet valid") != NULL)
        return "; the server's certificate is not valid yet: check the clock of this machine "
               "and the certificate's start date";
    if (strstr(text, "does not match target host") != NULL ||
        strstr(text, "no alternative certificate subject name") != NULL)
        return "; the server's certificate is for another host name: use in --api-base the "
               "host name that the certificate names, or give the server a certificate for "
               "this host";
    if (strstr(text, "self-signed") != NULL || strstr(text, "self signed") != NULL ||
        strstr(text, "local issuer") != NULL || strstr(text, "unable to get issuer") != NULL ||
        strstr(text, "unable to verify the first certificate") != NULL)
        return "; give the CA certificate that signed the server's certificate with "
               "--ca-file FILE";
    if (strstr(text, "revoked") != NULL)
        return "; the server's certificate is revoked: the server needs a new one";
    return "; the server's certificate failed verification for the reason above";
}

static int status_retryable(long status, int should_retry)
{
    if (should_retry >= 0)
        return should_retry;
    return status == 409 || status == 429 || status >= 500;
}

static uint64_t random_u64(void)
{
    uint64_t value = 0;
    if (getrandom(&value, sizeof value, 0) != (ssize_t)sizeof value)
        value = (uint64_t)monotonic_ns() * 6364136223846793005ULL;
    return value;
}

/* Half of the capped exponential backoff plus a random part of the other half. */
static long backoff_ms(const struct stripe_client *client, unsigned retry)
{
    long ceiling = client->retry_base_ms;
    for (unsigned i = 1; i < retry && ceiling < client->retry_max_ms; i++)
        ceiling *= 2;
    if (ceiling > client->retry_max_ms)
        ceiling = client->retry_max_ms;
    long half = ceiling / 2;
    return half + (long)(random_u64() % (uint64_t)(ceiling - half + 1));
}

/* Waits for the next request slot of the rate limit. */
static void rate_wait(struct stripe_client *client)
{
    int64_t now = monotonic_ns();
    if (client->next_start_ns > now)
        sleep_ns(client->next_start_ns - now);
    now = monotonic_ns();
    client->next_start_ns = now + client->interval_ns;
}

static struct curl_slist *request_headers(const struct stripe_client *client,
                                          const char *idempotency_key)
{
    struct curl_slist *headers = NULL;
    for (const struct curl_slist *item = client->auth_header; item != NULL; item = item->next)
        headers = curl_slist_append(headers, item->data);
    headers = curl_slist_append(headers, "Stripe-Version: " STRIPE_API_VERSION);
    headers = curl_slist_append(headers, "Content-Type: application/x-www-form-urlencoded");
    headers = curl_slist_append(headers, "Accept: application/json");
    /* No "Expect: 100-continue" round trip before small bodies. */
    headers = curl_slist_append(headers, "Expect:");
    if (idempotency_key != NULL) {
        char line[300];
        snprintf(line, sizeof line, "Idempotency-Key: %s", idempotency_key);
        headers = curl_slist_append(headers, line);
    }
    return headers;
}

static void headers_free(struct curl_slist *headers)
{
    for (struct curl_slist *item = headers; item != NULL; item = item->next)
        explicit_bzero(item->data, strlen(item->data));
    curl_slist_free_all(headers);
}

static CURLcode attempt_send(struct stripe_client *client, const char *method, const char *url,
                             const struct stripe_form *form, struct curl_slist *headers,
                             struct attempt *attempt, long *status_out)
{
    CURL *curl = client->curl;
    curl_easy_reset(curl);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "https,http");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, client->timeout_ms);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                     client->timeout_ms < 10000 ? client->timeout_ms : 10000L);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "harpoon-meter-stripe-export/1");
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
    if (client->ca_file[0] != '\0')
        curl_easy_setopt(curl, CURLOPT_CAINFO, client->ca_file);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, attempt);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, attempt);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, attempt->curl_error);
    if (log_level_current >= LOG_DEBUG) {
        curl_easy_setopt(curl, CURLOPT_DEBUGFUNCTION, on_debug);
        curl_easy_setopt(curl, CURLOPT_DEBUGDATA, client);
        curl_easy_setopt(curl, CURLOPT_VERBOSE, 1L);
    }
    if (strcmp(method, "DELETE") == 0) {
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "DELETE");
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(curl, CURLOPT_POST, 1L);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, form && form->text ? form->text : "");
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, form ? (long)form->size : 0L);
    } else {
        curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    }
    CURLcode code = curl_easy_perform(curl);
    *status_out = 0;
    if (code == CURLE_OK)
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, status_out);
    return code;
}

/* Writes Stripe's error object ({"error": {"type", "code", "param", "message"}}) into `error`. */
static void describe_error(const char *method, const char *path, long status, json_t *body,
                           const char *request_id, const char *secret, char *error,
                           size_t error_size)
{
    json_t *object = json_object_get(body, "error");
    const char *type = json_string_value(json_object_get(object, "type"));
    const char *code = json_string_value(json_object_get(object, "code"));
    const char *param = json_string_value(json_object_get(object, "param"));
    const char *message = json_string_value(json_object_get(object, "message"));
    /* A 401 fails every request of the run alike, and its cause is the key this run read. */
    const char *hint = status == 401 ? "; Stripe rejected the API key: check that "
                                       "STRIPE_API_KEY, or the file given with --api-key-file, "
                                       "holds a secret key (sk_test_... or sk_live_...) of the "
                                       "Stripe account"
                                     : "";
    char text[1280];
    snprintf(text, sizeof text, "%s %s: HTTP %ld%s%s%s%s%s%s: %s%s%s%s", method, path, status,
             type ? " " : "", type ? type : "", code ? " code " : "", code ? code : "",
             param ? " param " : "", param ? param : "", message ? message : "no error message",
             request_id[0] ? "; request " : "", request_id, hint);
    /* Stripe echoes a masked key in some messages; a local server might echo it whole. */
    stripe_redact(text, strlen(text), secret, error, error_size);
}

static void attempt_reset(struct attempt *attempt)
{
    free(attempt->body);
    memset(attempt, 0, sizeof *attempt);
    attempt->retry_after_ms = -1;
    attempt->should_retry = -1;
}

int stripe_request(struct stripe_client *client, const char *method, const char *path,
                   const struct stripe_form *form, const char *idempotency_key,
                   struct stripe_response *out, char *error, size_t error_size)
{
    memset(out, 0, sizeof *out);
    char url[1024];
    snprintf(url, sizeof url, "%s%s", client->api_base, path);
    struct curl_slist *headers = request_headers(client, idempotency_key);
    if (headers == NULL)
        return HM_ERR_NOMEM;

    struct attempt attempt = { 0 };
    int status = HM_ERR_IO;
    for (unsigned retry = 0;; retry++) {
        attempt_reset(&attempt);
        rate_wait(client);
        long http_status = 0;
        CURLcode code = attempt_send(client, method, url, form, headers, &attempt, &http_status);
        out->attempts++;
        out->status = http_status;
        snprintf(out->request_id, sizeof out->request_id, "%s", attempt.request_id);
        out->replayed = attempt.replayed;

        char reason[256];
        int retryable;
        if (code != CURLE_OK) {
            snprintf(reason, sizeof reason, "%s",
                     attempt.too_large           ? "reply too large"
                     : attempt.curl_error[0] != 0 ? attempt.curl_error
                                                  : curl_easy_strerror(code));
            retryable = !attempt.too_large && transport_error_retryable(code);
            snprintf(error, error_size, "%s %s: %s (%s)%s", method, path, reason,
                     client->api_base, certificate_hint(code, reason));
        } else {
            json_error_t json_error;
            json_decref(out->body);
            out->body = attempt.body ? json_loadb(attempt.body, attempt.body_size, 0, &json_error)
                                     : NULL;
            if (http_status >= 200 && http_status < 300) {
                if (out->body != NULL) {
                    status = HM_OK;
                    break;
                }
                snprintf(error, error_size, "%s %s: HTTP %ld with a body that is not JSON",
                         method, path, http_status);
                status = HM_ERR_IO;
                break;
            }
            describe_error(method, path, http_status, out->body, attempt.request_id,
                           client->api_key, error, error_size);
            snprintf(reason, sizeof reason, "HTTP %ld", http_status);
            retryable = status_retryable(http_status, attempt.should_retry);
            status = http_status >= 400 && http_status < 500 && http_status != 429 &&
                             http_status != 409
                         ? HM_ERR_INVALID
                         : HM_ERR_IO;
            if (!retryable)
                break;
        }
        if (!retryable || retry >= client->max_retries) {
            if (retryable)
                log_warn("stripe", "giving up method=%s path=%s attempts=%u reason=\"%s\"",
                         method, path, out->attempts, reason);
            status = code != CURLE_OK ? HM_ERR_IO : status;
            break;
        }
        long delay_ms = backoff_ms(client, retry + 1);
        if (attempt.retry_after_ms > delay_ms)
            delay_ms = attempt.retry_after_ms;
        log_warn("stripe", "retry method=%s path=%s attempt=%u reason=\"%s\" delay_ms=%ld "
                 "idempotency_key=%s", method, path, out->attempts + 1, reason, delay_ms,
                 idempotency_key ? idempotency_key : "-");
        sleep_ns((int64_t)delay_ms * 1000000);
    }
    attempt_reset(&attempt);
    headers_free(headers);
    return status;
}

void stripe_response_free(struct stripe_response *response)
{
    json_decref(response->body);
    response->body = NULL;
}
