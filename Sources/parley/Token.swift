import ArgumentParser
import Foundation
import ParleyAuth

/// `parley token`: mints an HS256 user token with the server's secret, for development.
struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print an HS256 token for a user, signed with PARLEY_JWT_SECRET (for development and tests)."
    )

    @Option(help: "The user id (the token's sub).")
    var user: String

    @Option(help: "HS256 secret. [env: PARLEY_JWT_SECRET]")
    var secret: String?

    @Option(help: "Seconds until the token expires. (default: 3600)")
    var ttl = 3600

    @Option(help: "Rooms the token allows, comma-separated; `prefix*` patterns allowed. (default: every room)")
    var rooms: String?

    @Option(help: "Roles, comma-separated: `moderator` lets the user delete any message and kick, mute and ban.")
    var roles: String?

    @Option(help: "Issuer (iss) to put in the token. [env: PARLEY_JWT_ISSUER]")
    var issuer: String?

    @Option(help: "Audience (aud) to put in the token. [env: PARLEY_JWT_AUDIENCE]")
    var audience: String?

    func run() async throws {
        let env = Environment.current
        guard let secret = secret ?? env["PARLEY_JWT_SECRET"] else {
            throw ValidationError("give --secret or set PARLEY_JWT_SECRET")
        }
        do {
            print(try await TokenMinter.hs256(
                user: user, secret: secret, expiresIn: ttl, rooms: Environment.list(rooms), roles: Environment.list(roles),
                issuer: issuer ?? env["PARLEY_JWT_ISSUER"], audience: audience ?? env["PARLEY_JWT_AUDIENCE"]
            ))
        } catch let error as AuthConfigurationError {
            throw ValidationError(error.message)
        }
    }
}
