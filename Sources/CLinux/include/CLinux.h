#ifndef PEERLESS_CLINUX_H
#define PEERLESS_CLINUX_H
#include <stdint.h>
#include "tgtadm.h"

/* Linux calls that Swift cannot make directly (variadic ioctl) or whose constants are
   macros. Each returns 0 or -errno. */

/* FICLONE: make dst share every extent of src (reflink). */
int peerless_ficlone(int dst_fd, int src_fd);

/* The filesystem magic of the filesystem holding fd (statfs f_type). */
int peerless_fs_type(int fd, int64_t *magic);

/* XFS: set the copy-on-write extent size hint on a file (FS_IOC_FSSETXATTR). */
int peerless_set_cow_extent_size(int fd, uint32_t bytes);
#endif
