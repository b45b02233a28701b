#ifndef PEERLESS_CISCSI_SHIM_H
#define PEERLESS_CISCSI_SHIM_H
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

/* Plain copies of what the unmarshalled SCSI structures hold, so that no C pointer or
   fixed-size C array has to cross into Swift. */
struct peerless_inquiry {
    int device_type;
    int qualifier;
    char vendor[9];
    char product[17];
    char revision[5];
};

static inline int peerless_unmarshall_inquiry(struct scsi_task *task, struct peerless_inquiry *out) {
    struct scsi_inquiry_standard *inq = scsi_datain_unmarshall(task);
    if (inq == NULL) return -1;
    out->device_type = (int)inq->device_type;
    out->qualifier = (int)inq->qualifier;
    memcpy(out->vendor, inq->vendor_identification, sizeof(out->vendor));
    memcpy(out->product, inq->product_identification, sizeof(out->product));
    memcpy(out->revision, inq->product_revision_level, sizeof(out->revision));
    return 0;
}

static inline int peerless_unmarshall_readcapacity16(struct scsi_task *task, uint64_t *last_lba, uint32_t *block_length) {
    struct scsi_readcapacity16 *rc = scsi_datain_unmarshall(task);
    if (rc == NULL) return -1;
    *last_lba = rc->returned_lba;
    *block_length = rc->block_length;
    return 0;
}

static inline int peerless_task_status(struct scsi_task *task) { return task->status; }
static inline int peerless_task_sense_key(struct scsi_task *task) { return (int)task->sense.key; }
static inline int peerless_task_datain(struct scsi_task *task, const unsigned char **data) {
    *data = task->datain.data;
    return task->datain.size;
}
#endif
