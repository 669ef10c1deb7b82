#include "engine/lib/data_lock.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

int data_dir_lock(const char *data_dir, char *holder, size_t holder_size)
{
    holder[0] = '\0';
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/meterd.lock", data_dir) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0)
        return fd;
    int err = errno;
    ssize_t size = pread(fd, holder, holder_size - 1, 0);
    holder[size > 0 ? size : 0] = '\0';
    holder[strcspn(holder, "\n")] = '\0';
    close(fd);
    errno = err;
    return -1;
}
