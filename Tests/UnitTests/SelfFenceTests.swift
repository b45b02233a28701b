import Testing

@testable import VCModel

/// When a node whose lease ran out stops its VMs, from what the other nodes answer.
@Suite struct SelfFenceTests {
    static func stops(_ answers: [SelfFence.Answer]) -> Bool {
        if case .stop = SelfFence.decide(answers: answers) { return true }
        return false
    }

    @Test func aNodeAloneKeepsItsVMs() {
        #expect(!Self.stops([]))
    }

    @Test func aNodeNobodyAnswersStops() {
        #expect(Self.stops([.silent, .silent]))
    }

    /// A renewal that is only slow: etcd still counts seconds on the lease.
    @Test func whileEtcdCountsMoreThanASecondTheVMsKeepRunning() {
        #expect(!Self.stops([.left(seconds: 2), .silent]))
        #expect(!Self.stops([.left(seconds: 3), .unknown]))
    }

    @Test func atASecondLeftOrExpiredTheyStopWhateverOthersSay() {
        #expect(Self.stops([.left(seconds: 1), .left(seconds: 3)]))
        #expect(Self.stops([.left(seconds: -1), .unknown, .silent]))
    }

    /// etcd without a quorum anywhere: nobody can fence or move anything, so stopping
    /// would only lose the VMs.
    @Test func whenNoNodeCanReadEtcdTheVMsKeepRunning() {
        #expect(!Self.stops([.unknown, .silent]))
        #expect(!Self.stops([.unknown, .unknown]))
    }
}
