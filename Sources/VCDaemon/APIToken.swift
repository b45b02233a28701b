import HTTPTypes
import Hummingbird
import VCHost

/// The bearer token that vcd's TCP listener requires. Anyone on the host can open a TCP
/// connection to loopback, so the listener asks for a secret that only root can read;
/// the Unix socket needs none, its file mode (0660, root) keeps other users out.
enum APIToken {
    /// Reads the token at `path`, or makes one (256 random bits, hex, mode 0600).
    static func loadOrCreate(at path: String) throws(DaemonError) -> String {
        if let text = try? HostFiles.read(path) {
            let token = text.trimmed
            guard token.count >= 32 else {
                throw .invalid("the API token in \(path) is too short; delete the file and restart vcd to make one")
            }
            return token
        }
        // SystemRandomNumberGenerator reads getrandom(2): fit for secrets.
        var random = SystemRandomNumberGenerator()
        let token = (0..<32).map { _ in
            let byte = UInt8.random(in: 0...255, using: &random)
            return String(byte, radix: 16).leftPadded(to: 2)
        }
        .joined()
        do {
            try HostFiles.makeDirectories(HostFiles.parent(path))
            try HostFiles.write(path, token + "\n", mode: 0o600)
        } catch {
            throw .failed("cannot write the API token: \(error)")
        }
        return token
    }

    /// Compares without an early exit, so response time does not reveal a prefix.
    static func matches(_ presented: String, _ token: String) -> Bool {
        let a = Array(presented.utf8)
        let b = Array(token.utf8)
        guard a.count == b.count else { return false }
        return zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}

/// Refuses every request that does not carry `Authorization: Bearer TOKEN`.
struct BearerTokenMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: String
    let tokenFile: String

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let header = request.headers[.authorization] ?? ""
        guard header.hasPrefix("Bearer "), APIToken.matches(String(header.dropFirst("Bearer ".count)), token) else {
            let reason = header.isEmpty ? "needs the API token" : "refused the API token sent"
            return APIRoutes.failure(
                .unauthorized(
                    "vcd's TCP API \(reason); run vc as root (it reads \(tokenFile)), pass --token-file, or use the local socket"
                ))
        }
        return try await next(request, context)
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
