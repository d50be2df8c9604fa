// Package sockmap loads, attaches and operates meshlet's socket-steering BPF
// programs (see bpf/meshlet.c): the cgroup connect4 capture hook, the sockops
// pairing program and the sk_msg redirect programs on two sockhashes.
//
// A Datapath is the loaded and attached state. It probes the kernel first
// (Probe), loads the programs, pins maps and programs under one bpffs folder,
// attaches to one cgroup v2 path given by the caller and to nothing else, and
// on Close detaches, unpins and removes that folder. While it runs it syncs
// the service table (what to capture), answers the proxy's original
// destination look-ups, marks the proxy's own upstream sockets and reports
// counters.
package sockmap
