// Package e2e runs the real node-agent binary against real programs, each
// test in its own network namespace, cgroup and bpffs that it creates and
// removes. Needs root and a kernel with cgroup connect4, sockops, sk_msg and
// sockhash (5.10+); in CI (CI=true) a missing privilege fails the tests.
package e2e
