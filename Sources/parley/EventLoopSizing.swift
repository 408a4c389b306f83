import Foundation
import NIOCore

/// SwiftNIO sizes its event-loop group from the machine's cores and cgroup limits, not from the
/// CPUs the process may run on: under `taskset -c 1` it starts one loop per core anyway, and
/// the loops then take turns on the one CPU. Parley sizes the group to the CPUs allowed, unless
/// `NIO_SINGLETON_GROUP_LOOP_COUNT` says otherwise (measured: docs/benchmarks.md).
enum EventLoopSizing {
    /// Call first thing in `main`, before anything uses SwiftNIO's singleton group.
    static func fitToAllowedCPUs() {
        guard ProcessInfo.processInfo.environment["NIO_SINGLETON_GROUP_LOOP_COUNT"] == nil,
              let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let allowed = allowedCPUCount(procStatus: status), allowed < System.coreCount
        else { return }
        NIOSingletons.groupLoopCountSuggestion = allowed
    }

    /// The number of CPUs in `Cpus_allowed_list:` of `/proc/self/status` ("0-3,6"), or nil.
    static func allowedCPUCount(procStatus: String) -> Int? {
        guard let line = procStatus.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }) else { return nil }
        var count = 0
        for range in line.dropFirst("Cpus_allowed_list:".count).split(separator: ",") {
            let bounds = range.split(separator: "-").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            switch bounds.count {
            case 1: guard bounds[0] != nil else { return nil }; count += 1
            case 2:
                guard let low = bounds[0], let high = bounds[1], high >= low else { return nil }
                count += high - low + 1
            default: return nil
            }
        }
        return count > 0 ? count : nil
    }
}
