package sockmap

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Features is what the running kernel offers the data path, with the reason
// for every missing piece.
type Features struct {
	Kernel string `json:"kernel"`
	// Capture: cgroup connect4 hook with socket cookies and the listener
	// look-up used to fail open.
	Capture bool `json:"capture"`
	// Pairing: sockops programs and sockhash maps.
	Pairing bool `json:"pairing"`
	// Redirect: sk_msg programs with bpf_msg_redirect_hash.
	Redirect bool `json:"redirect"`
	// CgroupLink: cgroup programs attach through bpf_link (5.7+).
	CgroupLink bool `json:"cgroup_link"`
	// Missing lists what is absent and why, in words.
	Missing []string `json:"missing,omitempty"`
}

// VerifiedKernels lists the kernel series on which meshlet's compatibility
// suite (nginx sendfile, redis, iperf3, Go io.Copy, asyncio) passed with
// acceleration on. Acceleration "auto" switches on only on these.
var VerifiedKernels = []string{"6.18"}

// Probe asks the kernel, through cilium/ebpf's features package, for every
// program type, map type and helper the data path needs.
func Probe() Features {
	f := Features{Kernel: kernelRelease()}
	miss := func(what string, err error) bool {
		if err == nil {
			return false
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			f.Missing = append(f.Missing, what+": not supported by this kernel")
		} else {
			f.Missing = append(f.Missing, fmt.Sprintf("%s: probe failed: %v", what, err))
		}
		return true
	}

	f.Capture = true
	if miss("cgroup sock_addr programs (connect4, 4.17)", features.HaveProgramType(ebpf.CGroupSockAddr)) {
		f.Capture = false
	} else {
		if miss("bpf_get_socket_cookie in connect hooks (4.19)", features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetSocketCookie)) {
			f.Capture = false
		}
		if miss("bpf_sk_lookup_tcp in connect hooks (5.2)", features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSkLookupTcp)) {
			f.Capture = false
		}
	}

	f.Pairing = true
	if miss("sockops programs (4.13)", features.HaveProgramType(ebpf.SockOps)) {
		f.Pairing = false
	}
	if miss("sockhash maps (4.18)", features.HaveMapType(ebpf.SockHash)) {
		f.Pairing = false
	}
	if f.Pairing && miss("bpf_sock_hash_update in sockops (4.18)", features.HaveProgramHelper(ebpf.SockOps, asm.FnSockHashUpdate)) {
		f.Pairing = false
	}

	f.Redirect = f.Pairing
	if miss("sk_msg programs (4.17)", features.HaveProgramType(ebpf.SkMsg)) {
		f.Redirect = false
	} else if miss("bpf_msg_redirect_hash (4.18)", features.HaveProgramHelper(ebpf.SkMsg, asm.FnMsgRedirectHash)) {
		f.Redirect = false
	}

	f.CgroupLink = kernelAtLeast(f.Kernel, 5, 7)
	return f
}

// Verified reports whether the kernel belongs to a series in VerifiedKernels.
func (f Features) Verified() bool {
	for _, v := range VerifiedKernels {
		if f.Kernel == v || strings.HasPrefix(f.Kernel, v+".") || strings.HasPrefix(f.Kernel, v+"-") {
			return true
		}
	}
	return false
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

func kernelAtLeast(release string, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(release, "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || (ma == major && mi >= minor)
}
