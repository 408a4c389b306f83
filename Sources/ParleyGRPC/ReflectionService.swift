import Foundation
import GRPCCore
import GRPCProtobuf
import SwiftProtobuf

/// gRPC server reflection (`grpc.reflection.v1`, and `v1alpha` for older tools) so that
/// grpcurl, grpcui or Postman can list and call Parley's services without the .proto files.
/// It describes the files embedded by `scripts/generate-grpc` (chat, health, reflection and
/// their imports), with their comments.
public struct ReflectionService: RegistrableRPCService {
    typealias Request = Grpc_Reflection_V1_ServerReflectionRequest
    typealias Response = Grpc_Reflection_V1_ServerReflectionResponse

    /// The served files, indexed by name and by the symbols they define.
    struct Catalog: Sendable {
        var files: [String: Google_Protobuf_FileDescriptorProto] = [:]
        var serialized: [String: Data] = [:]
        var symbols: [String: String] = [:]
        var services: [String] = []

        init(descriptorSet: Data) throws {
            let set = try Google_Protobuf_FileDescriptorSet(serializedBytes: descriptorSet)
            for file in set.file {
                files[file.name] = file
                serialized[file.name] = try file.serializedData()
                let prefix = file.package.isEmpty ? "" : file.package + "."
                for message in file.messageType { index(message, prefix: prefix, file: file.name) }
                for enumeration in file.enumType { symbols[prefix + enumeration.name] = file.name }
                for service in file.service {
                    symbols[prefix + service.name] = file.name
                    for method in service.method { symbols[prefix + service.name + "." + method.name] = file.name }
                }
            }
        }

        private mutating func index(_ message: Google_Protobuf_DescriptorProto, prefix: String, file: String) {
            let name = prefix + message.name
            symbols[name] = file
            for nested in message.nestedType { index(nested, prefix: name + ".", file: file) }
            for enumeration in message.enumType { symbols[name + "." + enumeration.name] = file }
        }

        /// The file first, then everything it imports, each once.
        func closure(of name: String) -> [Data] {
            var seen: Set<String> = []
            var order: [String] = []
            var pending = [name]
            while let next = pending.popLast() {
                guard seen.insert(next).inserted, let file = files[next] else { continue }
                order.append(next)
                pending.append(contentsOf: file.dependency.reversed())
            }
            return order.compactMap { serialized[$0] }
        }
    }

    let catalog: Catalog
    let serviceNames: [String]

    /// `services`: the fully qualified names listed by `list_services`.
    public init(services: [String]) throws {
        guard let data = Data(base64Encoded: reflectionFileDescriptorSetBase64, options: .ignoreUnknownCharacters) else {
            throw RPCError(code: .internalError, message: "embedded descriptor set is not base64")
        }
        self.catalog = try Catalog(descriptorSet: data)
        self.serviceNames = services
    }

    public func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        let methods = [
            Grpc_Reflection_V1_ServerReflection.Method.ServerReflectionInfo.descriptor,
            MethodDescriptor(fullyQualifiedService: "grpc.reflection.v1alpha.ServerReflection", method: "ServerReflectionInfo"),
        ]
        for method in methods {
            router.registerHandler(
                forMethod: method,
                deserializer: ProtobufDeserializer<Request>(),
                serializer: ProtobufSerializer<Response>()
            ) { request, _ in
                StreamingServerResponse { writer in
                    for try await message in request.messages {
                        try await writer.write(answer(message))
                    }
                    return [:]
                }
            }
        }
    }

    func answer(_ request: Request) -> Response {
        var response = Response()
        response.validHost = request.host
        response.originalRequest = request
        func files(_ name: String?, _ what: String) {
            if let name, catalog.files[name] != nil {
                response.fileDescriptorResponse = .with { $0.fileDescriptorProto = catalog.closure(of: name) }
            } else {
                response.errorResponse = .with {
                    $0.errorCode = Int32(RPCError.Code.notFound.rawValue)
                    $0.errorMessage = "\(what) not found"
                }
            }
        }
        switch request.messageRequest {
        case .listServices:
            response.listServicesResponse = .with {
                $0.service = serviceNames.map { name in .with { $0.name = name } }
            }
        case .fileByFilename(let name):
            files(name, "file \(name)")
        case .fileContainingSymbol(let symbol):
            files(catalog.symbols[symbol], "symbol \(symbol)")
        case .fileContainingExtension(let request):
            files(nil, "extension \(request.extensionNumber) of \(request.containingType)")
        case .allExtensionNumbersOfType(let type):
            if catalog.symbols[type] != nil {
                response.allExtensionNumbersResponse = .with { $0.baseTypeName = type }
            } else {
                files(nil, "type \(type)")
            }
        case nil:
            response.errorResponse = .with {
                $0.errorCode = Int32(RPCError.Code.invalidArgument.rawValue)
                $0.errorMessage = "no request set"
            }
        }
        return response
    }
}
