import CLibvirt
import Glibc

/// libvirt's default event loop, run on a thread of its own for the life of the process.
///
/// Without a registered event loop libvirt cannot send keepalives, so a libvirtd that
/// hangs without dying keeps every call on its connection blocked forever. The loop
/// blocks in poll(2) between events, which is why it gets a plain pthread and never a
/// thread of Swift's cooperative pool.
enum LibvirtEventLoop {
    /// Registers the default implementation and starts its thread, once. libvirt wants the
    /// registration before the first connection is opened.
    static let started: Bool = {
        guard virEventRegisterDefaultImpl() == 0 else {
            virResetLastError()
            return false
        }
        var thread = pthread_t()
        let rc = pthread_create(
            &thread, nil,
            { _ in
                while true {
                    // Fails only when poll(2) itself fails; pause so a persistent failure
                    // does not spin a core.
                    if virEventRunDefaultImpl() < 0 {
                        virResetLastError()
                        usleep(100_000)
                    }
                }
            }, nil)
        guard rc == 0 else { return false }
        pthread_detach(thread)
        return true
    }()
}
