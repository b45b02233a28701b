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

    /// A renewal that is only late (an etcd election): etcd still counts time on the lease.
    @Test func whileEtcdCountsTimeLeftTheVMsKeepRunning() {
        #expect(!Self.stops([.left(seconds: 1), .silent]))
        #expect(!Self.stops([.left(seconds: 3), .unknown]))
    }

    /// Gone (-1) as every node that could ask etcd says: they stop. One that still sees
    /// time left (an election seen half-way) keeps them, and so does 0.
    @Test func onceEveryoneWhoKnowsSaysGoneTheyStop() {
        #expect(Self.stops([.left(seconds: -1), .unknown, .silent]))
        #expect(Self.stops([.left(seconds: -1), .left(seconds: -1)]))
        #expect(!Self.stops([.left(seconds: -1), .left(seconds: 3)]))
        #expect(!Self.stops([.left(seconds: 0), .unknown]))
    }

    /// A member without the lease's expiry (not the leader) reports it as lasting for ever.
    @Test func forEverIsNoAnswer() {
        #expect(!Self.stops([.left(seconds: 9_223_372_036), .unknown]))
        #expect(Self.stops([.left(seconds: 9_223_372_036), .left(seconds: -1)]))
    }

    /// etcd without a quorum anywhere: nobody can fence or move anything, so stopping
    /// would only lose the VMs.
    @Test func whenNoNodeCanReadEtcdTheVMsKeepRunning() {
        #expect(!Self.stops([.unknown, .silent]))
        #expect(!Self.stops([.unknown, .unknown]))
    }
}
