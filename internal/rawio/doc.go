// Package rawio reads and writes a connection's non-blocking socket with
// raw read(2) and write(2), still waiting for readiness (and honouring
// deadlines and Close) through the Go runtime's network poller.
//
// Why: net.Conn's Read and Write go through the scheduler's entersyscall,
// which wakes the sysmon thread with a futex whenever it went to sleep
// because all Ps were idle. A proxy waiting on its peers idles between
// every step of an exchange, so each step paid a futex wake-up and the
// context switches of sysmon's thread running beside the proxy's (a
// quarter of the proxy's CPU per gRPC call on a single-P process). read(2)
// and write(2) on a non-blocking socket never block, so they need no P
// hand-off. The HTTP paths (pkg/hcm) and the TCP relay (pkg/proxy) use
// it; Split also replays the bytes a protocol sniffer peeked.
package rawio
