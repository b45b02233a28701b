/// Where a migrating VM ended up, decided from what its origin and its destination say
/// of its domain: how a migration that failed, or whose vcd died midway, is settled.
///
/// The rule never guesses: a VM is restarted on its destination only when its origin
/// says its domain runs no more there, or when the origin's incarnation was fenced at the
/// storage (its node was lost); as long as either node cannot tell, nothing is decided.
public enum MigrationOutcome: Sendable, Equatable {
    /// The guest runs on the destination: the migration completed.
    case moved
    /// The guest runs on its origin still: the migration did not happen, and the VM goes
    /// back to the incarnation running there.
    case stayed
    /// The guest runs nowhere (it was saved to the storage node, or stopped): it starts
    /// on the destination, restoring its memory image when one was saved.
    case stopped
    /// Not decided yet: both run (the migration is in progress), or a node that must
    /// answer does not.
    case undecided(String)

    /// What a node said of the VM's domain: its libvirt state ("running", "paused",
    /// "missing", …), or nil when the node did not answer.
    public static func decide(origin: String?, destination: String?, originFenced: Bool) -> MigrationOutcome {
        let atDestination = destination.map(isActive)
        let atOrigin = originFenced ? false : origin.map(isActive)
        switch (atOrigin, atDestination) {
        case (true?, true?): return .undecided("it runs on both nodes: the migration is still in progress")
        case (false?, true?): return .moved
        case (true?, false?): return .stayed
        case (false?, false?): return .stopped
        case (nil, _): return .undecided("its origin does not answer and was not fenced")
        case (_, nil): return .undecided("its destination does not answer")
        }
    }

    /// A domain that has a QEMU (running, paused or blocked), as `decide` reads states.
    static func isActive(_ state: String) -> Bool {
        ["running", "paused", "blocked", "shutdown", "crashed", "suspended"].contains(state)
    }
}
