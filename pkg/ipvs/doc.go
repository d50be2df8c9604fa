// Package ipvs is reserved for meshlet's planned fallback data path for nodes whose kernel cannot run
// the socket-steering BPF programs: IPVS virtual servers that send service traffic to the node-local
// proxy instead of BPF connect-time rewrites.
//
// Status: design only. The package has no code yet and nothing in meshlet uses it; README.md beside
// this file records the design and the kernel behaviour it rests on (measured in the test/vm kernel
// matrix on Debian 5.10, 6.1 and 6.12 kernels).
package ipvs
