import Glibc
import HTTPTypes
import Hummingbird
import VCHost

/// The bearer token that vcd's TCP listener requires. Anyone on the host can open a TCP
/// connection to loopback, so the listener asks for a secret that only root can read;
/// the Unix socket needs none, its file mode (0660) keeps other users out.
struct APIToken: Sendable {
    let value: String
    /// Where it is kept, for the message that tells a client where to find it.
    let file: String

    /// Reads the token at `path`, or makes one (256 random bits, hex, mode 0600) when there
    /// is none. A token file that others could read or replace is refused, not used.
    static func loadOrCreate(at path: String) throws(DaemonError) -> APIToken {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 && errno == ENOENT { return try create(at: path) }
        guard fd >= 0 else {
            throw .failed("cannot read the API token \(path): \(HostFiles.lastError()); it must be a regular file")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_uid == geteuid(),
            info.st_mode & 0o077 == 0
        else {
            throw .invalid(
                "the API token \(path) must be a regular file of vcd's user with mode 0600; fix it (chmod 600) or delete it"
            )
        }
        let token: String
        do {
            token = try HostFiles.read(path).trimmed
        } catch {
            throw .failed("cannot read the API token: \(error)")
        }
        guard token.count >= 32 else {
            throw .invalid("the API token in \(path) is too short; delete the file and restart vcd to make one")
        }
        return APIToken(value: token, file: path)
    }

    private static func create(at path: String) throws(DaemonError) -> APIToken {
        // SystemRandomNumberGenerator reads getrandom(2): fit for secrets.
        var random = SystemRandomNumberGenerator()
        let hex = Array("0123456789abcdef")
        let token = String(
            (0..<32).flatMap { _ in
                let byte = UInt8.random(in: 0...255, using: &random)
                return [hex[Int(byte >> 4)], hex[Int(byte & 0x0f)]]
            })
        do {
            try HostFiles.makeDirectories(HostFiles.parent(path))
            try HostFiles.write(path, token + "\n", mode: 0o600)
        } catch {
            throw .failed("cannot write the API token: \(error)")
        }
        return APIToken(value: token, file: path)
    }

    /// Whether an `Authorization` header carries this token. Compares without an early
    /// exit, so that response time does not reveal how much of a guess was right.
    func admits(_ header: String?) -> Bool {
        guard let header, header.count > 7, header.prefix(7).lowercased() == "bearer " else { return false }
        let a = Array(header.utf8.dropFirst(7))
        let b = Array(value.utf8)
        guard a.count == b.count else { return false }
        return zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}

/// Refuses every request that does not carry `Authorization: Bearer TOKEN`.
struct BearerTokenMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: APIToken

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let header = request.headers[.authorization]
        guard token.admits(header) else {
            let reason = header == nil ? "needs the API token" : "refused the API token sent"
            var response = APIRoutes.failure(
                .unauthorized(
                    "vcd's TCP API \(reason); run vc as root (it reads \(token.file)), pass --token-file, or use the local socket"
                ))
            response.headers[.wwwAuthenticate] = "Bearer realm=\"vcd\""
            return response
        }
        return try await next(request, context)
    }
}
