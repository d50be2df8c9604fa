//go:build linux

package rawio

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Supported: raw socket I/O is implemented (and tested) on Linux.
const Supported = true

func (s *Socket) doRead(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(s.rp))), uintptr(len(s.rp)))
		switch e {
		case 0:
			s.rn, s.rerr = int(n), nil
			if n == 0 && len(s.rp) > 0 {
				s.rerr = io.EOF
			}
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			s.rn, s.rerr = 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", e)}
			return true
		}
	}
}

func (s *Socket) doWrite(fd uintptr) bool {
	for len(s.wp) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(s.wp))), uintptr(len(s.wp)))
		switch e {
		case 0:
			s.wp = s.wp[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.werr = &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", e)}
			return true
		}
	}
	return true
}
