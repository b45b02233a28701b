#ifndef PEERLESS_CSYSTEMD_SHIM_H
#define PEERLESS_CSYSTEMD_SHIM_H
#include <systemd/sd-daemon.h>
#endif
