import GRPCCore
import ParleyCore

extension ParleyError {
    /// The gRPC status code of each spec'd error code.
    var grpcCode: RPCError.Code {
        switch code {
        case .badRequest: .invalidArgument
        case .unauthorized: .unauthenticated
        case .forbidden: .permissionDenied
        case .notFound: .notFound
        case .tooLarge, .rateLimited: .resourceExhausted
        case .unavailable: .unavailable
        default: .internalError
        }
    }

    /// The status a call ends with. A rate-limited call carries `retry-after-ms` in its
    /// trailing metadata, and every error names its Parley code in `parley-error`.
    var rpcError: RPCError {
        var metadata: Metadata = ["parley-error": .string(code.name)]
        if let retryAfterMs { metadata.addString(String(retryAfterMs), forKey: "retry-after-ms") }
        return RPCError(code: grpcCode, message: message, metadata: metadata)
    }

    /// Any error of a handler as the status the call ends with; anything but a `ParleyError`
    /// is a server bug and is not described to the client.
    static func rpcError(for error: any Error) -> RPCError {
        if let error = error as? RPCError { return error }
        if let error = error as? ParleyError { return error.rpcError }
        return RPCError(code: .internalError, message: "internal error")
    }
}
