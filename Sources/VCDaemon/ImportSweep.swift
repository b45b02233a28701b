import ServiceLifecycle

/// Discards, every reconcile interval, the image imports that nothing will finish (see
/// `ImageLibrary.recover`): an import whose node died leaves its file and target on the
/// storage node, and a discard the storage node could not take is tried again.
struct ImportSweep: Service, CustomStringConvertible {
    var description: String { "ImportSweep" }
    let images: ImageLibrary
    let intervalSeconds: Int

    func run() async throws {
        // The reconciler's first pass already recovered once at start.
        guard intervalSeconds > 0 else {
            try? await gracefulShutdown()
            return
        }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(intervalSeconds)) }
            if Task.isShuttingDownGracefully || Task.isCancelled { break }
            await images.recover()
        }
    }
}
