@testable import ParleyRedis
import Testing

@Suite("Room interest state machine")
struct RoomInterestsTests {
    typealias Machine = RoomInterests<Int>

    @Test("the first interest subscribes, the last one cancels, the ones between do nothing")
    func counting() {
        var machine = Machine()
        do {
            let result = machine.change(room: "r", interested: true, generation: 1)
            #expect(result == .subscribe(generation: 1))
        }
        do {
            let result = machine.started(room: "r", generation: 1, handle: 10)
            #expect(result)
        }
        do {
            let result = machine.change(room: "r", interested: true, generation: 2)
            #expect(result == .none)
        }
        do {
            let result = machine.change(room: "r", interested: false, generation: 3)
            #expect(result == .none)
        }
        #expect(machine.subscribed == ["r"])
        do {
            let result = machine.change(room: "r", interested: false, generation: 4)
            #expect(result == .cancel(10))
        }
        #expect(machine.rooms.isEmpty)
    }

    @Test("a false that overtakes its true ends right: no subscription, nothing left")
    func swapped() {
        var machine = Machine()
        do {
            let result = machine.change(room: "r", interested: false, generation: 1)
            #expect(result == .none)
        }
        do {
            let result = machine.change(room: "r", interested: true, generation: 2)
            #expect(result == .none)
        }
        #expect(machine.rooms.isEmpty)
    }

    @Test("a subscription handed over after its interest ended, or restarted, is refused")
    func staleStart() {
        var machine = Machine()
        do {
            let result = machine.change(room: "r", interested: true, generation: 1)
            #expect(result == .subscribe(generation: 1))
        }
        // Interest ends before the task is handed over: nothing to cancel yet.
        do {
            let result = machine.change(room: "r", interested: false, generation: 2)
            #expect(result == .none)
        }
        do {
            let result = machine.started(room: "r", generation: 1, handle: 10)
            #expect(!result)
        }
        // And begins again: a new period, whose task alone is kept.
        do {
            let result = machine.change(room: "r", interested: true, generation: 3)
            #expect(result == .subscribe(generation: 3))
        }
        do {
            let result = machine.started(room: "r", generation: 1, handle: 10)
            #expect(!result)
        }
        do {
            let result = machine.started(room: "r", generation: 3, handle: 11)
            #expect(result)
        }
        do {
            let result = machine.started(room: "r", generation: 3, handle: 12)
            #expect(!result)
        }
        #expect(machine.subscribed == ["r"])
    }

    @Test("a failed subscription lets the next interest subscribe again; shutdown cancels all")
    func failureAndShutdown() {
        var machine = Machine()
        _ = machine.change(room: "a", interested: true, generation: 1)
        do {
            let result = machine.started(room: "a", generation: 1, handle: 10)
            #expect(result)
        }
        machine.failed(room: "a", handle: 99)  // not its task: ignored
        #expect(machine.subscribed == ["a"])
        machine.failed(room: "a", handle: 10)
        #expect(machine.subscribed.isEmpty)
        do {
            let result = machine.change(room: "a", interested: true, generation: 2)
            #expect(result == .subscribe(generation: 2))
        }
        do {
            let result = machine.started(room: "a", generation: 2, handle: 20)
            #expect(result)
        }
        _ = machine.change(room: "b", interested: true, generation: 3)
        do {
            let result = machine.started(room: "b", generation: 3, handle: 30)
            #expect(result)
        }
        let cancelled = Set(machine.removeAll())
        #expect(cancelled == [20, 30])
        #expect(machine.rooms.isEmpty)
    }
}
