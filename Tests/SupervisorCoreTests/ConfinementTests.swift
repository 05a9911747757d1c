import SupervisorPlatform
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// What the filter compiler does to any rules it is given, whatever a
/// manifest or group listed (the system tests prove it with real workers).
final class ConfinementTests: XCTestCase {
    func nr(_ name: String) -> Int32 { Seccomp.number(of: name)! }

    func testNeverAllowedCallsLoseTheirAllowRules() {
        let rules = [
            "socket", "connect", "bind", "listen", "accept", "accept4", "shmget", "msgget", "mq_open",
            "ptrace", "memfd_secret", "read",
        ].map { SeccompRule(number: nr($0)) }
        let out = SeccompConfinement.apply(rules + [SeccompRule(number: nr("clone3"), action: .fail(errno: ENOSYS))])
        XCTAssertEqual(out.filter { $0.action == .allow }.map(\.number), [nr("read")])
        // Errno rules stay (clone3 answers ENOSYS so libc falls back to clone).
        XCTAssertTrue(out.contains(SeccompRule(number: nr("clone3"), action: .fail(errno: ENOSYS))))
        // Every filter answers socket(AF_UNIX, ...) with EACCES, and nothing else of socket.
        XCTAssertEqual(
            out.filter { $0.number == nr("socket") },
            [
                SeccompRule(
                    number: nr("socket"), action: .fail(errno: EACCES),
                    condition: .init(argument: 0, mask: 0xFFFF_FFFF, value: 1))
            ])
    }

    func testSocketpairOnlyForUnixStreamAndSeqpacket() {
        let out = SeccompConfinement.apply([SeccompRule(number: nr("socketpair"))])
        let pairs = out.filter { $0.number == nr("socketpair") }
        XCTAssertEqual(pairs.count, 2)
        for (rule, type) in zip(pairs, [UInt64(1), 5]) {
            XCTAssertEqual(rule.action, .allow)
            XCTAssertEqual(
                rule.conditions,
                [
                    .init(argument: 0, mask: 0xFFFF_FFFF, value: 1),
                    .init(argument: 1, mask: 0xFFF7_F7FF, value: type),
                ])
        }
        // Not allowed at all when no rule asked for it.
        XCTAssertTrue(SeccompConfinement.apply([]).allSatisfy { $0.number != nr("socketpair") })
    }

    /// A worker behind the egress proxy (its own network namespace) gets
    /// TCP sockets and connect; never datagram or raw sockets, bind,
    /// listen or accept, whatever the rules say.
    func testProxyEgressAllowsOnlyInternetStreamSocketsAndConnect() {
        let rules = ["socket", "connect", "bind", "listen", "accept"].map { SeccompRule(number: nr($0)) }
        let plain = SeccompConfinement.apply(rules)
        XCTAssertFalse(plain.contains { $0.action == .allow && [nr("socket"), nr("connect")].contains($0.number) })
        let out = SeccompConfinement.apply(rules, proxyEgress: true)
        let allowed = out.filter { $0.action == .allow }
        XCTAssertEqual(Set(allowed.map(\.number)), [nr("socket"), nr("connect")])
        XCTAssertEqual(
            allowed.filter { $0.number == nr("socket") }.map(\.conditions),
            [UInt64(2), 10].map { family in
                [
                    .init(argument: 0, mask: 0xFFFF_FFFF, value: family),
                    .init(argument: 1, mask: 0xFFF7_F7FF, value: 1),
                ]
            })
        XCTAssertEqual(allowed.filter { $0.number == nr("connect") }.map(\.conditions), [[]])
        // Datagram and netlink sockets fail (a resolver goes on without them).
        let failing = out.filter { $0.number == nr("socket") && $0.action == .fail(errno: EACCES) }.map(\.conditions)
        XCTAssertTrue(failing.contains([.init(argument: 0, mask: 0xFFFF_FFFF, value: 16)]))
        for family in [UInt64(2), 10] {
            XCTAssertTrue(
                failing.contains([
                    .init(argument: 0, mask: 0xFFFF_FFFF, value: family),
                    .init(argument: 1, mask: 0xFFF7_F7FF, value: 2),
                ]))
        }
    }

    func testMemfdCreateOnlyWithNoexecSeal() {
        let out = SeccompConfinement.apply([SeccompRule(number: nr("memfd_create"))])
        XCTAssertEqual(
            out.filter { $0.number == nr("memfd_create") },
            [SeccompRule(number: nr("memfd_create"), condition: .init(argument: 1, mask: 0x18, value: 0x8))])
    }
}
