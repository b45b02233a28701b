#ifndef PEERLESS_TGTADM_H
#define PEERLESS_TGTADM_H
#include <stdint.h>

/* tgtd's management protocol, as tgt's usr/tgtadm.h defines it (unchanged from 1.0.85,
   Debian 12's, to 1.0.97). A client connects to the Unix socket
   "/var/run/tgtd/socket.<control port>" ($TGT_IPC_SOCKET replaces the part before the
   dot), writes a request header whose `len` counts the header and the parameters that
   follow it ("key=value,key=value" and a NUL), and reads a response header whose `len`
   counts itself and the NUL-terminated text after it. tgtd closes the connection after
   each response. The layouts live here so that the compiler, not a guess, places the
   padding before the 64-bit fields; tgt declares `mode` and `op` as enums, which are
   four bytes on every Linux ABI. */

#define PEERLESS_TGT_IPC_NAMESPACE "/var/run/tgtd/socket"
#define PEERLESS_TGT_LLD_NAME_LEN 64
/* tgtd rejects a request whose parameters are longer (mgmt.c, MAX_MGT_BUFSIZE). */
#define PEERLESS_TGT_MAX_PARAMETER_BYTES 8192

/* The values of tgt's enums; the names carry tgt's with a prefix. */
enum peerless_tgtadm_op {
    PEERLESS_OP_NEW,
    PEERLESS_OP_DELETE,
    PEERLESS_OP_SHOW,
    PEERLESS_OP_BIND,
    PEERLESS_OP_UNBIND,
    PEERLESS_OP_UPDATE,
    PEERLESS_OP_STATS,
    PEERLESS_OP_START,
    PEERLESS_OP_STOP,
};

enum peerless_tgtadm_mode {
    PEERLESS_MODE_SYSTEM,
    PEERLESS_MODE_TARGET,
    PEERLESS_MODE_DEVICE,
    PEERLESS_MODE_PORTAL,
    PEERLESS_MODE_LLD,
    PEERLESS_MODE_SESSION,
    PEERLESS_MODE_CONNECTION,
    PEERLESS_MODE_ACCOUNT,
};

enum peerless_tgtadm_account_dir {
    PEERLESS_ACCOUNT_TYPE_INCOMING,
    PEERLESS_ACCOUNT_TYPE_OUTGOING,
};

/* tgt's usr/tgtadm_error.h. */
enum peerless_tgtadm_errno {
    PEERLESS_TGTADM_SUCCESS,
    PEERLESS_TGTADM_UNKNOWN_ERR,
    PEERLESS_TGTADM_NOMEM,
    PEERLESS_TGTADM_NO_DRIVER,
    PEERLESS_TGTADM_NO_TARGET,

    PEERLESS_TGTADM_NO_LUN,
    PEERLESS_TGTADM_NO_SESSION,
    PEERLESS_TGTADM_NO_CONNECTION,
    PEERLESS_TGTADM_NO_BINDING,
    PEERLESS_TGTADM_TARGET_EXIST,
    PEERLESS_TGTADM_LUN_EXIST,
    PEERLESS_TGTADM_BINDING_EXIST,

    PEERLESS_TGTADM_ACL_EXIST,
    PEERLESS_TGTADM_ACL_NOEXIST,
    PEERLESS_TGTADM_USER_EXIST,
    PEERLESS_TGTADM_NO_USER,
    PEERLESS_TGTADM_TOO_MANY_USER,
    PEERLESS_TGTADM_INVALID_REQUEST,

    PEERLESS_TGTADM_OUTACCOUNT_EXIST,
    PEERLESS_TGTADM_TARGET_ACTIVE,
    PEERLESS_TGTADM_LUN_ACTIVE,
    PEERLESS_TGTADM_DRIVER_ACTIVE,
    PEERLESS_TGTADM_UNSUPPORTED_OPERATION,
    PEERLESS_TGTADM_UNKNOWN_PARAM,

    PEERLESS_TGTADM_PREVENT_REMOVAL,
};

/* tgt's scsi.h TYPE_DISK: the device type tgtadm sends unless told otherwise. */
#define PEERLESS_TGT_TYPE_DISK 0x00

struct peerless_tgtadm_req {
    uint32_t mode; /* enum tgtadm_mode */
    uint32_t op;   /* enum tgtadm_op */
    char lld[PEERLESS_TGT_LLD_NAME_LEN];
    uint32_t len;
    int32_t tid;
    uint64_t sid;
    uint64_t lun;
    uint32_t cid;
    uint32_t host_no;
    uint32_t device_type;
    uint32_t ac_dir;
    uint32_t pack;
    uint32_t force;
};

struct peerless_tgtadm_rsp {
    uint32_t err; /* enum tgtadm_errno */
    uint32_t len;
};

_Static_assert(sizeof(struct peerless_tgtadm_req) == 120, "tgtadm_req is 120 bytes on LP64 Linux");
_Static_assert(sizeof(struct peerless_tgtadm_rsp) == 8, "tgtadm_rsp is 8 bytes");
#endif
