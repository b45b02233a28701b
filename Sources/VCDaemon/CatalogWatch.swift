import Logging
import ServiceLifecycle
import VCCatalog

/// Keeps the catalog's mirrors fed by etcd watches for as long as vcd runs (the cluster
/// summaries, see `Catalog.clusterSummaries()`), and stops them with it. A watch that
/// fails is listed and opened again by the mirror itself; meanwhile listings read etcd.
struct CatalogWatch: Service, CustomStringConvertible {
    var description: String { "CatalogWatch" }
    let catalog: Catalog
    let logger: Logger

    func run() async throws {
        let (catalog, logger) = (self.catalog, self.logger)
        await cancelWhenGracefulShutdown {
            await catalog.clusterMirror.follow(catalog.etcd, logger: logger)
        }
    }
}
