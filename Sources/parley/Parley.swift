import ArgumentParser

@main
struct Parley: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parley",
        abstract: "Parley: a self-hosted real-time chat server.",
        subcommands: [Serve.self, Gateway.self, Bench.self, BenchStore.self, BenchReads.self, Token.self],
        defaultSubcommand: Serve.self
    )

    static func main() async {
        EventLoopSizing.fitToAllowedCPUs()
        do {
            var command = try parseAsRoot()
            if var command = command as? AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
