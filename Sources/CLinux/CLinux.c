#include "CLinux.h"
#include <errno.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/vfs.h>

int peerless_ficlone(int dst_fd, int src_fd) {
    return ioctl(dst_fd, FICLONE, src_fd) == 0 ? 0 : -errno;
}

int peerless_fs_type(int fd, int64_t *magic) {
    struct statfs st;
    if (fstatfs(fd, &st) != 0) return -errno;
    *magic = (int64_t)st.f_type;
    return 0;
}

int peerless_set_cow_extent_size(int fd, uint32_t bytes) {
    struct fsxattr attr;
    if (ioctl(fd, FS_IOC_FSGETXATTR, &attr) != 0) return -errno;
    attr.fsx_xflags |= FS_XFLAG_COWEXTSIZE;
    attr.fsx_cowextsize = bytes;
    return ioctl(fd, FS_IOC_FSSETXATTR, &attr) == 0 ? 0 : -errno;
}
