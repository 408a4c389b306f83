import HummingbirdWSClient

extension Subscriber {
    /// Subscribes as a Socket.IO client over the Engine.IO WebSocket transport, with the same
    /// order and loss checks: `CONNECT` with `auth`, `join` with an ack, answers to the
    /// server's pings.
    func runSocketIO() async {
        let base = url.hasSuffix("/ws") ? String(url.dropLast(3)) : url
        do {
            try await WebSocketClient.connect(
                url: "\(base)/socket.io/?EIO=4&transport=websocket", configuration: .init(maxFrameSize: 1 << 24), logger: quietLogger
            ) { inbound, outbound, _ in
                for try await message in inbound.messages(maxSize: 1 << 24) {
                    guard case .text(var text) = message else { continue }
                    if text.utf8.starts(with: #"42["message","#.utf8) {
                        self.record(&text)
                    } else if text == "2" {
                        try await outbound.write(.text("3"))
                    } else if text.utf8.starts(with: "0{".utf8) {
                        try await outbound.write(.text(#"40{"user":"sub-\#(self.index)"}"#))
                    } else if text.utf8.starts(with: "40{".utf8) {
                        try await outbound.write(.text(#"421["join",{"room":"\#(self.room)"}]"#))
                    } else if text.utf8.starts(with: "431[".utf8) {
                        self.markJoined()
                    }
                }
            }
        } catch {}
        markClosed()
    }
}
