/*
 * Load drivers, arrival schedules, latency percentiles, /proc readings and
 * child processes.
 *
 * Open-loop latency is measured from each frame's scheduled arrival time,
 * not from when the sender got to write it, so a server that falls behind
 * is charged for the queue it builds (no coordinated omission).
 */
#include "bench.h"

#include "common/status.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

volatile int bench_interrupted = 0;

/* How long a reader waits for an acknowledgement before it gives the connection up. */
#define ACK_WAIT_S 30

/* ---- time ---- */

int64_t bench_now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

void bench_sleep_until_ns(int64_t deadline_ns)
{
    struct timespec until = { .tv_sec = deadline_ns / 1000000000,
                              .tv_nsec = deadline_ns % 1000000000 };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
        continue;
}

static double thread_cpu_seconds(void)
{
    struct rusage usage;
    if (getrusage(RUSAGE_THREAD, &usage) != 0)
        return 0;
    return (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 +
           (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
}

/* ---- latency ---- */

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted samples. */
static double percentile_ms(const uint64_t *sorted, size_t count, double fraction)
{
    size_t rank = (size_t)ceil(fraction * (double)count);
    if (rank == 0)
        rank = 1;
    return (double)sorted[rank - 1] / 1e6;
}

void latency_summarize(uint64_t *samples_ns, size_t count, struct latency_summary *out)
{
    memset(out, 0, sizeof *out);
    out->samples = count;
    if (count == 0)
        return;
    qsort(samples_ns, count, sizeof *samples_ns, compare_u64);
    out->p50_ms = percentile_ms(samples_ns, count, 0.50);
    out->p99_ms = percentile_ms(samples_ns, count, 0.99);
    out->p999_ms = percentile_ms(samples_ns, count, 0.999);
    out->max_ms = (double)samples_ns[count - 1] / 1e6;
}

/* ---- /proc ---- */

/* Reads the fields after the command name of /proc/PID/stat; fields[0] is field 3 (state). */
static int stat_fields(pid_t pid, unsigned long long fields[20])
{
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return -1;
    size_t size = fread(text, 1, sizeof text - 1, file);
    fclose(file);
    text[size] = '\0';
    char *cursor = strrchr(text, ')');
    if (cursor == NULL)
        return -1;
    cursor += 2;
    for (int i = 0; i < 20; i++) {
        while (*cursor == ' ')
            cursor++;
        fields[i] = i == 0 ? (unsigned long long)(unsigned char)*cursor
                           : strtoull(cursor, NULL, 10);
        while (*cursor && *cursor != ' ')
            cursor++;
    }
    return 0;
}

double proc_cpu_seconds(pid_t pid)
{
    unsigned long long fields[20];
    if (stat_fields(pid, fields) != 0)
        return -1;
    /* utime, stime, cutime, cstime are fields 14 to 17. */
    double ticks = (double)(fields[11] + fields[12] + fields[13] + fields[14]);
    return ticks / (double)sysconf(_SC_CLK_TCK);
}

/* Calls visit for each live process whose parent is `parent`. */
static void for_each_child(pid_t parent, void (*visit)(pid_t child, void *context), void *context)
{
    DIR *proc = opendir("/proc");
    if (proc == NULL)
        return;
    struct dirent *entry;
    while ((entry = readdir(proc)) != NULL) {
        if (!isdigit((unsigned char)entry->d_name[0]))
            continue;
        pid_t pid = (pid_t)atoi(entry->d_name);
        unsigned long long fields[20];
        if (stat_fields(pid, fields) == 0 && (pid_t)fields[1] == parent)
            visit(pid, context);
    }
    closedir(proc);
}

static void add_child_cpu(pid_t child, void *context)
{
    unsigned long long fields[20];
    if (stat_fields(child, fields) == 0)
        *(double *)context += (double)(fields[11] + fields[12]) / (double)sysconf(_SC_CLK_TCK);
}

double proc_tree_cpu_seconds(pid_t pid)
{
    double total = proc_cpu_seconds(pid);
    if (total < 0)
        return -1;
    for_each_child(pid, add_child_cpu, &total);
    return total;
}

long proc_status_kib(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return -1;
    long value = -1;
    size_t field_size = strlen(field);
    while (fgets(line, sizeof line, file) != NULL) {
        if (strncmp(line, field, field_size) == 0 && line[field_size] == ':') {
            value = strtol(line + field_size + 1, NULL, 10);
            break;
        }
    }
    fclose(file);
    return value;
}

static void *status_sampler_run(void *context)
{
    struct status_sampler *sampler = context;
    while (!atomic_load(&sampler->stop)) {
        long kib = proc_status_kib(sampler->pid, sampler->field);
        if (kib > atomic_load(&sampler->peak_kib))
            atomic_store(&sampler->peak_kib, kib);
        usleep(20000);
    }
    return NULL;
}

void status_sampler_start(struct status_sampler *sampler, pid_t pid, const char *field)
{
    sampler->pid = pid;
    sampler->field = field;
    atomic_store(&sampler->stop, 0);
    atomic_store(&sampler->peak_kib, proc_status_kib(pid, field));
    sampler->running = pthread_create(&sampler->thread, NULL, status_sampler_run, sampler) == 0;
}

long status_sampler_stop(struct status_sampler *sampler)
{
    if (!sampler->running)
        return -1;
    atomic_store(&sampler->stop, 1);
    pthread_join(sampler->thread, NULL);
    sampler->running = 0;
    long last = proc_status_kib(sampler->pid, sampler->field);
    long peak = atomic_load(&sampler->peak_kib);
    return last > peak ? last : peak;
}

static void max_child_hwm(pid_t child, void *context)
{
    long hwm = proc_status_kib(child, "VmHWM");
    if (hwm > *(long *)context)
        *(long *)context = hwm;
}

long proc_tree_hwm_kib(pid_t pid)
{
    long largest = proc_status_kib(pid, "VmHWM");
    for_each_child(pid, max_child_hwm, &largest);
    return largest;
}

int proc_reset_hwm(void)
{
    int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return HM_ERR_IO;
    int ok = write(fd, "5", 1) == 1;
    close(fd);
    return ok ? HM_OK : HM_ERR_IO;
}

/* ---- child processes ---- */

pid_t child_start(char *const argv[], const char *log_path, const char *run_as)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* Own process group: a Ctrl-C reaches meterbench only, which then stops the servers in order. */
    setpgid(0, 0);
    if (log_path != NULL) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
    }
    if (run_as != NULL && geteuid() == 0) {
        char *wrapped[64] = { "runuser", "-u", (char *)run_as, "--" };
        int count = 4;
        for (int i = 0; argv[i] != NULL && count < 63; i++)
            wrapped[count++] = argv[i];
        wrapped[count] = NULL;
        execvp(wrapped[0], wrapped);
    } else {
        execvp(argv[0], argv);
    }
    fprintf(stderr, "meterbench: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

int child_wait(pid_t pid)
{
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int child_run(char *const argv[], const char *log_path, const char *run_as)
{
    pid_t pid = child_start(argv, log_path, run_as);
    return pid < 0 ? -1 : child_wait(pid);
}

int child_stop(pid_t pid, int timeout_ms)
{
    if (pid <= 0)
        return -1;
    kill(pid, SIGTERM);
    for (int waited = 0; waited < timeout_ms; waited += 10) {
        int status = 0;
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (done == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (done < 0 && errno != EINTR)
            return -1;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    child_wait(pid);
    return -1;
}

/* ---- phases ---- */

int phase_schedule(struct phase *phase, uint64_t seed)
{
    phase->schedule_ns = malloc((phase->frame_count ? phase->frame_count : 1) *
                                sizeof *phase->schedule_ns);
    if (phase->schedule_ns == NULL)
        return HM_ERR_NOMEM;
    double at_ns = 0;
    uint64_t state = seed;
    for (size_t i = 0; i < phase->frame_count; i++) {
        state = state * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
        /* Uniform in (0, 1] from the top 53 bits, then an exponential gap. */
        double uniform = ((double)(state >> 11) + 1.0) / 9007199254740992.0;
        at_ns += -log(uniform) / phase->frames_per_second * 1e9;
        phase->schedule_ns[i] = (int64_t)at_ns;
    }
    return HM_OK;
}

void phase_free(struct phase *phase)
{
    free(phase->schedule_ns);
    free(phase->latency_ns);
    free(phase->send_lag_ns);
    phase->schedule_ns = NULL;
    phase->latency_ns = NULL;
    phase->send_lag_ns = NULL;
}

void progress_tick(const struct phase *phase, size_t frames_done, size_t events_done,
                   int64_t started_ns, int64_t *last_ns)
{
    int64_t now = bench_now_ns();
    if (now - *last_ns < 1000000000)
        return;
    *last_ns = now;
    double seconds = (double)(now - started_ns) / 1e9;
    char label[32];
    if (phase->open_loop)
        snprintf(label, sizeof label, "open loop %.0f%%", phase->load_fraction * 100);
    else
        snprintf(label, sizeof label, "closed loop");
    fprintf(stderr, "meterbench:   %s %s: %zu/%zu frames, %zu events, %.0f events/s\n",
            phase->peer, label, frames_done, phase->frame_count, events_done,
            seconds > 0 ? (double)events_done / seconds : 0.0);
}

static int phase_latency_alloc(struct phase *phase)
{
    phase->latency_ns = calloc(phase->frame_count ? phase->frame_count : 1,
                               sizeof *phase->latency_ns);
    return phase->latency_ns == NULL ? HM_ERR_NOMEM : HM_OK;
}

/* ---- TCP frame stream ---- */

struct connection {
    struct pool *pool;
    struct phase *phase;
    int fd;
    uint32_t index, stride, window;
    int64_t started_ns;
    atomic_size_t sent;  /* frames written */
    atomic_size_t acked; /* frames acknowledged */
    atomic_size_t events_acked;
    atomic_int writer_done;
    atomic_int failed;
    pthread_mutex_t mutex;
    pthread_cond_t acked_changed;
    uint64_t stored, duplicates, conflicts, rejected;
    int64_t last_ack_ns;
};

static int connect_loopback(const char *host, uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (fd < 0 || inet_pton(AF_INET, host, &address.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval wait = { .tv_sec = ACK_WAIT_S };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, sizeof wait);
    return fd;
}

static size_t frame_of(const struct connection *connection, size_t k)
{
    return connection->index + k * connection->stride;
}

static void *stream_writer(void *argument)
{
    struct connection *connection = argument;
    struct phase *phase = connection->phase;
    int64_t cap_ns = connection->started_ns + (int64_t)(phase->time_cap_s * 1e9);
    for (size_t k = 0;; k++) {
        size_t f = frame_of(connection, k);
        if (f >= phase->frame_count || bench_interrupted || connection->failed)
            break;
        if (phase->open_loop) {
            bench_sleep_until_ns(connection->started_ns + phase->schedule_ns[f]);
        } else {
            pthread_mutex_lock(&connection->mutex);
            while (connection->sent - connection->acked >= connection->window &&
                   !connection->failed)
                pthread_cond_wait(&connection->acked_changed, &connection->mutex);
            pthread_mutex_unlock(&connection->mutex);
        }
        if (bench_now_ns() > cap_ns) {
            phase->stopped_by_cap = 1;
            break;
        }
        const struct pool_frame *frame = &connection->pool->frames[f];
        const uint8_t *bytes = connection->pool->frame_bytes + frame->offset;
        size_t done = 0;
        while (done < frame->size) {
            ssize_t written = send(connection->fd, bytes + done, frame->size - done,
                                   MSG_NOSIGNAL);
            if (written < 0 && errno == EINTR)
                continue;
            if (written <= 0) {
                connection->failed = 1;
                break;
            }
            done += (size_t)written;
        }
        if (connection->failed)
            break;
        if (phase->open_loop)
            phase->send_lag_ns[f] = (uint64_t)(bench_now_ns() - connection->started_ns -
                                               phase->schedule_ns[f]);
        connection->sent++;
    }
    connection->writer_done = 1;
    return NULL;
}

/* Reads one acknowledgement; returns 0, or -1 on a closed, failed or timed-out socket. */
static int read_ack(int fd, uint8_t bytes[ACK_SIZE])
{
    size_t done = 0;
    while (done < ACK_SIZE) {
        ssize_t got = recv(fd, bytes + done, ACK_SIZE - done, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        done += (size_t)got;
    }
    return 0;
}

static void *stream_reader(void *argument)
{
    struct connection *connection = argument;
    struct phase *phase = connection->phase;
    for (size_t k = 0;; k++) {
        while (k >= connection->sent && !connection->writer_done)
            usleep(50);
        if (k >= connection->sent)
            break;
        uint8_t bytes[ACK_SIZE];
        struct frame_ack ack;
        size_t f = frame_of(connection, k);
        if (read_ack(connection->fd, bytes) != 0 || ack_decode(bytes, &ack) != HM_OK ||
            ack.frame_id != f + 1) {
            fprintf(stderr, "meterbench: %s: no valid acknowledgement for frame %zu\n",
                    phase->peer, f + 1);
            connection->failed = 1;
            break;
        }
        int64_t now = bench_now_ns();
        const struct pool_frame *frame = &connection->pool->frames[f];
        if (ack.status == FRAME_ACCEPTED) {
            connection->stored += ack.stored;
            connection->duplicates += ack.duplicates;
            connection->conflicts += ack.conflicts;
        } else {
            connection->rejected += frame->event_count;
        }
        if (phase->open_loop)
            phase->latency_ns[f] = (uint64_t)(now - connection->started_ns - phase->schedule_ns[f]);
        connection->last_ack_ns = now;
        connection->events_acked += frame->event_count;
        pthread_mutex_lock(&connection->mutex);
        connection->acked++;
        pthread_cond_signal(&connection->acked_changed);
        pthread_mutex_unlock(&connection->mutex);
    }
    pthread_mutex_lock(&connection->mutex);
    if (connection->acked < connection->sent)
        connection->failed = 1;
    pthread_cond_signal(&connection->acked_changed);
    pthread_mutex_unlock(&connection->mutex);
    return NULL;
}

/* Collects the latencies (and send lags) of acknowledged frames into the front of the arrays. */
static void compact_latencies(struct phase *phase, const uint8_t *answered)
{
    size_t count = 0;
    for (size_t f = 0; f < phase->frame_count; f++) {
        if (!answered[f])
            continue;
        phase->latency_ns[count] = phase->latency_ns[f];
        if (phase->send_lag_ns != NULL)
            phase->send_lag_ns[count] = phase->send_lag_ns[f];
        count++;
    }
    phase->latency_count = count;
    phase->send_lag_count = phase->send_lag_ns != NULL ? count : 0;
}

int drive_stream(struct pool *pool, struct phase *phase, const struct stream_options *options)
{
    uint32_t count = options->connections ? options->connections : 1;
    struct connection *connections = calloc(count, sizeof *connections);
    uint8_t *answered = calloc(phase->frame_count + 1, 1);
    if (phase->open_loop && phase->send_lag_ns == NULL)
        phase->send_lag_ns = calloc(phase->frame_count ? phase->frame_count : 1,
                                    sizeof *phase->send_lag_ns);
    if (connections == NULL || answered == NULL || phase_latency_alloc(phase) != HM_OK ||
        (phase->open_loop && phase->send_lag_ns == NULL)) {
        free(connections);
        free(answered);
        return HM_ERR_NOMEM;
    }
    int rc = HM_OK;
    uint32_t opened = 0;
    for (; opened < count; opened++) {
        struct connection *connection = &connections[opened];
        connection->fd = connect_loopback(options->host, options->port);
        if (connection->fd < 0) {
            fprintf(stderr, "meterbench: %s: cannot connect to %s:%u: %s\n", phase->peer,
                    options->host, options->port, strerror(errno));
            rc = HM_ERR_IO;
            break;
        }
        connection->pool = pool;
        connection->phase = phase;
        connection->index = opened;
        connection->stride = count;
        connection->window = options->window ? options->window : 512;
        pthread_mutex_init(&connection->mutex, NULL);
        pthread_cond_init(&connection->acked_changed, NULL);
    }

    pthread_t threads[2 * 64];
    uint32_t started = 0;
    int64_t started_ns = bench_now_ns();
    for (uint32_t i = 0; rc == HM_OK && i < count && i < 64; i++) {
        connections[i].started_ns = started_ns;
        pthread_create(&threads[started++], NULL, stream_reader, &connections[i]);
        pthread_create(&threads[started++], NULL, stream_writer, &connections[i]);
    }
    int64_t last_progress = started_ns;
    for (int running = rc == HM_OK; running;) {
        usleep(20000);
        size_t frames = 0, events = 0;
        running = 0;
        for (uint32_t i = 0; i < count; i++) {
            frames += connections[i].acked;
            events += connections[i].events_acked;
            if (!connections[i].writer_done || connections[i].acked < connections[i].sent)
                running = running || !connections[i].failed;
        }
        progress_tick(phase, frames, events, started_ns, &last_progress);
    }
    for (uint32_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);

    int64_t last_ack_ns = started_ns;
    for (uint32_t i = 0; i < opened; i++) {
        struct connection *connection = &connections[i];
        close(connection->fd);
        phase->frames_done += connection->acked;
        phase->events_done += connection->events_acked;
        phase->stored += connection->stored;
        phase->duplicates += connection->duplicates;
        phase->conflicts += connection->conflicts;
        phase->rejected += connection->rejected;
        phase->failed |= connection->failed;
        if (connection->last_ack_ns > last_ack_ns)
            last_ack_ns = connection->last_ack_ns;
        for (size_t k = 0; k < connection->acked; k++)
            answered[frame_of(connection, k)] = 1;
        pthread_mutex_destroy(&connection->mutex);
        pthread_cond_destroy(&connection->acked_changed);
    }
    phase->seconds = (double)(last_ack_ns - started_ns) / 1e9;
    compact_latencies(phase, answered);
    free(answered);
    free(connections);
    if (rc == HM_OK && (phase->failed || phase->rejected > 0))
        rc = HM_ERR_IO;
    return rc;
}

/* ---- worker pool and group commit ---- */

struct batch_run {
    struct pool *pool;
    struct phase *phase;
    const struct batch_ops *ops;
    uint32_t group_events;
    int64_t started_ns;
    int64_t cap_ns;
    pthread_mutex_t mutex;
    size_t next; /* next frame to take */
    atomic_size_t frames_done;
    atomic_size_t events_done;
    atomic_int running;
    atomic_int failed;
    int64_t last_done_ns;
    double cpu_s;
};

struct batch_worker {
    struct batch_run *run;
    uint32_t index;
    void *state;
};

/* Takes the next run of frames: one frame, or every arrived frame up to the group size. */
static size_t take_frames(struct batch_run *run, size_t *first)
{
    struct phase *phase = run->phase;
    pthread_mutex_lock(&run->mutex);
    size_t f = run->next;
    if (f >= phase->frame_count || run->failed || bench_interrupted) {
        pthread_mutex_unlock(&run->mutex);
        return 0;
    }
    if (phase->open_loop && run->group_events == 0) {
        run->next = f + 1;
        pthread_mutex_unlock(&run->mutex);
        bench_sleep_until_ns(run->started_ns + phase->schedule_ns[f]);
        *first = f;
        return 1;
    }
    if (phase->open_loop)
        bench_sleep_until_ns(run->started_ns + phase->schedule_ns[f]);
    size_t end = f + 1;
    size_t events = run->pool->frames[f].event_count;
    int64_t now = bench_now_ns() - run->started_ns;
    while (run->group_events > 0 && end < phase->frame_count &&
           events + run->pool->frames[end].event_count <= run->group_events &&
           (!phase->open_loop || phase->schedule_ns[end] <= now)) {
        events += run->pool->frames[end].event_count;
        end++;
    }
    run->next = end;
    pthread_mutex_unlock(&run->mutex);
    *first = f;
    return end - f;
}

static void *batch_worker_main(void *argument)
{
    struct batch_worker *worker = argument;
    struct batch_run *run = worker->run;
    struct phase *phase = run->phase;
    double cpu_start = thread_cpu_seconds();
    size_t first = 0, count;
    while ((count = take_frames(run, &first)) > 0) {
        if (bench_now_ns() > run->cap_ns) {
            phase->stopped_by_cap = 1;
            break;
        }
        if (run->ops->store(worker->state, first, count) != HM_OK) {
            run->failed = 1;
            break;
        }
        int64_t now = bench_now_ns();
        size_t events = 0;
        for (size_t f = first; f < first + count; f++) {
            events += run->pool->frames[f].event_count;
            if (phase->open_loop)
                phase->latency_ns[f] = (uint64_t)(now - run->started_ns - phase->schedule_ns[f]);
            else
                phase->latency_ns[f] = 1; /* marks the frame as stored */
        }
        pthread_mutex_lock(&run->mutex);
        if (now > run->last_done_ns)
            run->last_done_ns = now;
        pthread_mutex_unlock(&run->mutex);
        run->events_done += events;
        run->frames_done += count;
    }
    double cpu = thread_cpu_seconds() - cpu_start;
    pthread_mutex_lock(&run->mutex);
    run->cpu_s += cpu;
    pthread_mutex_unlock(&run->mutex);
    run->running--;
    return NULL;
}

int drive_batches(struct pool *pool, struct phase *phase, const struct batch_ops *ops,
                  uint32_t workers, uint32_t group_events)
{
    if (workers == 0 || workers > 64 || (group_events > 0 && workers != 1))
        return HM_ERR_INVALID;
    if (phase_latency_alloc(phase) != HM_OK)
        return HM_ERR_NOMEM;
    struct batch_run run = { .pool = pool, .phase = phase, .ops = ops,
                             .group_events = group_events };
    pthread_mutex_init(&run.mutex, NULL);
    struct batch_worker worker_states[64];
    int rc = HM_OK;
    uint32_t opened = 0;
    for (; opened < workers; opened++) {
        worker_states[opened] = (struct batch_worker){ .run = &run, .index = opened };
        if ((rc = ops->open(ops->peer, opened, &worker_states[opened].state)) != HM_OK)
            break;
    }
    pthread_t threads[64];
    run.started_ns = run.last_done_ns = bench_now_ns();
    run.cap_ns = run.started_ns + (int64_t)(phase->time_cap_s * 1e9);
    uint32_t started = 0;
    for (; rc == HM_OK && started < workers; started++) {
        run.running++;
        pthread_create(&threads[started], NULL, batch_worker_main, &worker_states[started]);
    }
    int64_t last_progress = run.started_ns;
    while (run.running > 0) {
        usleep(20000);
        progress_tick(phase, run.frames_done, run.events_done, run.started_ns, &last_progress);
    }
    for (uint32_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    if (ops->finish != NULL)
        ops->finish(ops->peer);
    for (uint32_t i = 0; i < opened; i++)
        ops->close(worker_states[i].state);

    phase->frames_done = run.frames_done;
    phase->events_done = run.events_done;
    phase->stored = run.events_done;
    phase->seconds = (double)(run.last_done_ns - run.started_ns) / 1e9;
    phase->thread_cpu_s = run.cpu_s;
    phase->failed |= run.failed;
    size_t count = 0;
    for (size_t f = 0; f < phase->frame_count; f++) {
        if (phase->latency_ns[f] != 0)
            phase->latency_ns[count++] = phase->latency_ns[f];
    }
    phase->latency_count = phase->open_loop ? count : 0;
    pthread_mutex_destroy(&run.mutex);
    if (rc == HM_OK && run.failed)
        rc = HM_ERR_IO;
    return rc;
}
