import ServiceLifecycle
import Synchronization

/// What a step boundary throws once vcd is stopping: the operation ends there, its journal
/// stays in the catalog, and the next vcd to start finishes or undoes it.
struct OperationStopped: Error, CustomStringConvertible {
    var description: String { "vcd is stopping" }
}

/// The lifecycle operations running in this vcd. Operations run in tasks of their own
/// (they outlive the request that started them), so the service group does not know them;
/// without this, a SIGTERM would shut the thread pools down under their steps, the undo
/// would fail too, and the journal would be closed on a half-made cluster. On a graceful
/// stop no new step starts, the steps in flight complete, and the journal is left for the
/// next start.
public final class OperationTasks: Sendable {
    private struct State {
        var stopping = false
        var next = 0
        var running: [Int: Task<Void, Never>] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    public var isStopping: Bool { state.withLock { $0.stopping } }

    /// Throws `OperationStopped` once vcd is stopping: called before every step.
    func checkStopping() throws(OperationStopped) {
        if isStopping { throw OperationStopped() }
    }

    /// Runs `work` in a tracked task of its own; false (and nothing runs) once stopping.
    func start(_ work: @escaping @Sendable () async -> Void) -> Bool {
        state.withLock { s in
            guard !s.stopping else { return false }
            let id = s.next
            s.next += 1
            s.running[id] = Task {
                await work()
                _ = self.state.withLock { $0.running.removeValue(forKey: id) }
            }
            return true
        }
    }

    /// Lets no new step start and waits until every running operation has ended.
    public func drain() async {
        let running = state.withLock { s in
            s.stopping = true
            return Array(s.running.values)
        }
        for task in running { await task.value }
    }
}

/// Drains the operations when the service group stops. It is the group's last service, so
/// it is stopped first: operations reach a step boundary while the API still streams their
/// last events, and before `Daemon` shuts the libvirt and iSCSI thread pools down.
struct OperationDrain: Service, CustomStringConvertible {
    var description: String { "OperationDrain" }
    let operations: OperationTasks

    func run() async throws {
        try? await gracefulShutdown()
        await operations.drain()
    }
}
