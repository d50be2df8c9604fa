//go:build !linux

package hcm

// rawIOSupported: elsewhere connections use their own Read and Write.
const rawIOSupported = false

func (s *rawSocket) doRead(uintptr) bool  { panic("hcm: raw socket I/O is Linux-only") }
func (s *rawSocket) doWrite(uintptr) bool { panic("hcm: raw socket I/O is Linux-only") }
