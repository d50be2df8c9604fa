//go:build !linux

package rawio

// Supported: elsewhere connections use their own Read and Write.
const Supported = false

func (s *Socket) doRead(uintptr) bool  { panic("rawio: raw socket I/O is Linux-only") }
func (s *Socket) doWrite(uintptr) bool { panic("rawio: raw socket I/O is Linux-only") }
