#ifndef PEERLESS_CLIBVIRT_SHIM_H
#define PEERLESS_CLIBVIRT_SHIM_H
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#endif
