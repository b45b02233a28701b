import Logging
import VCModel

/// Runs a plan's steps: the shared part in order, then the machines' chains in parallel.
/// Undo runs the chains in parallel and then the shared part, and goes on past failures
/// so that one stuck resource does not keep the others alive.
struct PlanExecution: Sendable {
    let runner: StepRunner
    let events: AsyncStream<OperationEvent>.Continuation
    /// Called each time a machine's chain completes, with how many have; may throw to
    /// stop the operation (fault injection in tests).
    var machineCompleted: @Sendable (Int) throws -> Void = { _ in }

    func perform(_ plan: ClusterPlan) async throws {
        let total = plan.allSteps.count
        let counter = StepCounter()
        for step in plan.shared {
            try Task.checkCancellation()
            let note = try await timed(step)
            events.yield(.step(Self.line(step, note), completed: await counter.next(), total: total))
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for chain in plan.machines {
                group.addTask {
                    do {
                        for step in chain {
                            try Task.checkCancellation()
                            let note = try await timed(step)
                            events.yield(.step(Self.line(step, note), completed: await counter.next(), total: total))
                        }
                    } catch is OperationStopped {
                        // vcd is stopping: this chain ends at its step boundary, and the
                        // others must reach theirs too rather than be cancelled mid-step.
                        return
                    }
                    try machineCompleted(await counter.machineDone())
                }
            }
            // The first failure leaves this loop, which cancels the other chains (they stop
            // before their next step); rollback then undoes them all.
            for try await _ in group {}
        }
        try runner.node.operations.checkStopping()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for step in plan.final {
                group.addTask {
                    let note = try await timed(step)
                    events.yield(.step(Self.line(step, note), completed: await counter.next(), total: total))
                }
            }
            try await group.waitForAll()
        }
    }

    private func timed(_ step: Step) async throws -> String? {
        let started = ContinuousClock.now
        let note = try await runner.perform(step)
        let ms = (ContinuousClock.now - started) / .milliseconds(1)
        runner.node.logger.debug("step done", metadata: ["step": "\(step)", "ms": "\(Int(ms))"])
        return note
    }

    /// A step's progress line: its name, and what it said beside "done".
    static func line(_ step: Step, _ note: String?) -> String {
        note.map { "\(step): \($0)" } ?? step.description
    }

    /// Returns the failures, as text; empty when everything was undone.
    func undo(_ plan: ClusterPlan) async -> [String] {
        var problems: [String] = []
        await withTaskGroup(of: [String].self) { group in
            for chain in plan.machines {
                group.addTask {
                    var failed: [String] = []
                    for step in chain {
                        do {
                            try await runner.undo(step)
                            events.yield(.step("undo \(step)"))
                        } catch {
                            failed.append("undo \(step): \(DaemonError.from(error))")
                        }
                    }
                    return failed
                }
            }
            for await failed in group { problems += failed }
        }
        for step in plan.shared {
            if case .firewall = step, !problems.isEmpty {
                // Something of the network or its VMs may still be up: it keeps its boundary
                // until a later teardown gets the rest.
                problems.append("kept the tenant boundary (nftables) until the rest is undone")
                continue
            }
            do {
                try await runner.undo(step)
                events.yield(.step("undo \(step)"))
            } catch {
                problems.append("undo \(step): \(DaemonError.from(error))")
            }
        }
        return problems
    }
}

private actor StepCounter {
    private var steps = 0
    private var machines = 0
    func next() -> Int {
        steps += 1
        return steps
    }
    func machineDone() -> Int {
        machines += 1
        return machines
    }
}
