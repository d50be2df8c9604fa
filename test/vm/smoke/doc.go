// Package smoke is the self-test of the test/vm kernel matrix. Its tests run inside each VM (and on any
// privileged host): they probe, with cilium/ebpf's features package and real attachments, every program
// type, map type, helper and attach mode meshlet's data path needs, print one machine-readable line per
// probe, and create a private cgroup to prove that bpf_link attachment to cgroups works.
//
// Probe lines have the form
//
//	MESHLET-FEATURE name=NAME status=ok|unsupported|error min=X.Y detail="..."
//
// and are collected by test/vm/cmd/vmrun into results.json. A feature that is missing on a kernel at or
// above its upstream minimum version fails the test; below the minimum it is reported and, for
// features meshlet cannot run without, fails only when privileged tests are required (CI=true or
// MESHLET_REQUIRE_PRIV=1), otherwise the test is skipped.
//
// The package has no non-test code.
package smoke
