package sockmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Service is one capture entry: connections to Addr:Port (or to any address
// on Port when Addr is the zero value or 0.0.0.0) are steered to the proxy.
type Service struct {
	Addr netip.Addr
	Port uint16
	// ID is carried to the proxy with the original destination.
	ID uint32
}

func (s Service) key() (meshletSvcKey, error) {
	k := meshletSvcKey{Port: s.Port}
	if s.Port == 0 {
		return k, errors.New("port 0")
	}
	if s.Addr.IsValid() && !s.Addr.IsUnspecified() {
		if !s.Addr.Is4() {
			return k, fmt.Errorf("address %v: only IPv4 is captured", s.Addr)
		}
		k.Addr = ip4ToNet(s.Addr)
	}
	return k, nil
}

func ip4ToNet(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func netToIP4(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// SyncServices makes the capture table equal to services: entries not in the
// list are removed, the others added or updated. Only the entries that differ
// from the table are written. Each entry is written on its own (in batches
// where the kernel has the batch API, which updates element by element), so a
// connect() sees every entry either before or after its change.
func (d *Datapath) SyncServices(services []Service) error {
	want := make(map[meshletSvcKey]meshletSvcValue, len(services))
	for _, s := range services {
		k, err := s.key()
		if err != nil {
			return fmt.Errorf("service %v:%d: %w", s.Addr, s.Port, err)
		}
		want[k] = meshletSvcValue{Id: s.ID}
	}
	m := d.objs.MltServices
	have, err := readServices(m)
	if err != nil {
		return err
	}
	var (
		putK  []meshletSvcKey
		putV  []meshletSvcValue
		stale []meshletSvcKey
	)
	for k, v := range want {
		if cur, ok := have[k]; !ok || cur != v {
			putK = append(putK, k)
			putV = append(putV, v)
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := putServices(m, putK, putV); err != nil {
		return err
	}
	return deleteServices(m, stale)
}

// serviceBatch is the number of entries per batch system call.
const serviceBatch = 4096

// readServices reads the capture table, in batches where the kernel allows.
func readServices(m *ebpf.Map) (map[meshletSvcKey]meshletSvcValue, error) {
	out := map[meshletSvcKey]meshletSvcValue{}
	var cursor ebpf.MapBatchCursor
	keys := make([]meshletSvcKey, serviceBatch)
	vals := make([]meshletSvcValue, serviceBatch)
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			out[keys[i]] = vals[i]
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return out, nil // end of the table
		case errors.Is(err, ebpf.ErrNotSupported):
			return iterateServices(m)
		case err != nil:
			return nil, fmt.Errorf("read service table: %w", err)
		}
	}
}

func iterateServices(m *ebpf.Map) (map[meshletSvcKey]meshletSvcValue, error) {
	out := map[meshletSvcKey]meshletSvcValue{}
	var (
		k meshletSvcKey
		v meshletSvcValue
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read service table: %w", err)
	}
	return out, nil
}

func putServices(m *ebpf.Map, keys []meshletSvcKey, vals []meshletSvcValue) error {
	for len(keys) > 0 {
		n := min(len(keys), serviceBatch)
		if _, err := m.BatchUpdate(keys[:n], vals[:n], nil); err != nil {
			break // not supported, or failed part-way: write one by one
		}
		keys, vals = keys[n:], vals[n:]
	}
	for i, k := range keys {
		if err := m.Put(k, vals[i]); err != nil {
			return fmt.Errorf("write service %v:%d: %w", netToIP4(k.Addr), k.Port, err)
		}
	}
	return nil
}

func deleteServices(m *ebpf.Map, keys []meshletSvcKey) error {
	for len(keys) > 0 {
		n := min(len(keys), serviceBatch)
		if _, err := m.BatchDelete(keys[:n], nil); err != nil {
			break // not supported, or a key already gone: one by one
		}
		keys = keys[n:]
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove service %v:%d: %w", netToIP4(k.Addr), k.Port, err)
		}
	}
	return nil
}

// Services lists the capture table as the kernel holds it.
func (d *Datapath) Services() ([]Service, error) {
	var (
		k   meshletSvcKey
		v   meshletSvcValue
		out []Service
	)
	it := d.objs.MltServices.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Service{Addr: netToIP4(k.Addr), Port: k.Port, ID: v.Id})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read service table: %w", err)
	}
	return out, nil
}

// Original is what the capture hook recorded for one connection.
type Original struct {
	// Dst is the destination the application asked for.
	Dst       netip.AddrPort
	ServiceID uint32
	// Cookie is the application socket's cookie.
	Cookie uint64
}

// OriginalDst returns the original destination of a captured connection,
// identified by the application socket's address (the accepted
// connection's remote address). The entry is consumed.
func (d *Datapath) OriginalDst(app netip.AddrPort) (Original, bool, error) {
	if !app.Addr().Is4() && !app.Addr().Is4In6() {
		return Original{}, false, nil
	}
	k := meshletConnKey{Addr: ip4ToNet(app.Addr().Unmap()), Port: app.Port()}
	var v meshletConnValue
	if err := d.objs.MltConns.LookupAndDelete(k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Original{}, false, nil
		}
		// LookupAndDelete on hash maps needs 5.14; fall back.
		if errors.Is(err, ebpf.ErrNotSupported) {
			if err := d.objs.MltConns.Lookup(k, &v); err != nil {
				if errors.Is(err, ebpf.ErrKeyNotExist) {
					return Original{}, false, nil
				}
				return Original{}, false, fmt.Errorf("look up original destination of %v: %w", app, err)
			}
			_ = d.objs.MltConns.Delete(k)
		} else {
			return Original{}, false, fmt.Errorf("look up original destination of %v: %w", app, err)
		}
	}
	return Original{
		Dst:       netip.AddrPortFrom(netToIP4(v.OrigAddr), v.OrigPort),
		ServiceID: v.ServiceId,
		Cookie:    v.Cookie,
	}, true, nil
}

// Bypass flags for MarkSocket.
const (
	// BypassCapture keeps the socket's connect() from being captured.
	BypassCapture uint32 = 1
	// BypassAccelUpstream also pairs the socket (and a same-node server's
	// socket at the other end) for acceleration.
	BypassAccelUpstream uint32 = 2
)

// MarkSocket records the agent's own socket (before its connect()) so the
// capture hook leaves it alone. It returns the socket cookie for Forget.
func (d *Datapath) MarkSocket(fd int, flags uint32) (uint64, error) {
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("read socket cookie: %w", err)
	}
	if err := d.objs.MltBypass.Put(cookie, flags|BypassCapture); err != nil {
		return 0, fmt.Errorf("mark socket %d: %w", cookie, err)
	}
	return cookie, nil
}

// Forget drops the mark of a socket whose connect() has completed.
func (d *Datapath) Forget(cookie uint64) {
	_ = d.objs.MltBypass.Delete(cookie)
}

// DialControl returns a net.Dialer Control function that marks each socket
// before it connects. accel asks for same-node upstream acceleration.
func (d *Datapath) DialControl(accel bool) func(network, address string, c syscall.RawConn) error {
	flags := BypassCapture
	if accel {
		flags |= BypassAccelUpstream
	}
	return func(network, address string, c syscall.RawConn) error {
		var merr error
		if err := c.Control(func(fd uintptr) { _, merr = d.MarkSocket(int(fd), flags) }); err != nil {
			return err
		}
		return merr
	}
}

// Stats are the data path's counters, summed over CPUs.
type Stats struct {
	Captured          uint64 `json:"captured"`
	CaptureBypassed   uint64 `json:"capture_bypassed"`
	CaptureNoListener uint64 `json:"capture_no_listener"`
	CaptureErrors     uint64 `json:"capture_errors"`
	PairedApp         uint64 `json:"paired_app"`
	PairedProxy       uint64 `json:"paired_proxy"`
	PairedUpstream    uint64 `json:"paired_upstream"`
	PairedServer      uint64 `json:"paired_server"`
	PairErrors        uint64 `json:"pair_errors"`
	RedirectMsgs      uint64 `json:"redirect_msgs"`
	RedirectBytes     uint64 `json:"redirect_bytes"`
	MissMsgs          uint64 `json:"miss_msgs"`
	MissBytes         uint64 `json:"miss_bytes"`
	PassMsgs          uint64 `json:"pass_msgs"`
	PassBytes         uint64 `json:"pass_bytes"`
	FwdArmed          uint64 `json:"forward_armed"`
	FwdMsgs           uint64 `json:"forward_msgs"`
	FwdBytes          uint64 `json:"forward_bytes"`
}

// Stats reads the per-CPU counters.
func (d *Datapath) Stats() (Stats, error) {
	var per []meshletStats
	if err := d.objs.MltStats.Lookup(uint32(0), &per); err != nil {
		return Stats{}, fmt.Errorf("read BPF counters: %w", err)
	}
	var s Stats
	for _, p := range per {
		s.Captured += p.Captured
		s.CaptureBypassed += p.CaptureBypassed
		s.CaptureNoListener += p.CaptureNoListener
		s.CaptureErrors += p.CaptureErrors
		s.PairedApp += p.PairedApp
		s.PairedProxy += p.PairedProxy
		s.PairedUpstream += p.PairedUpstream
		s.PairedServer += p.PairedServer
		s.PairErrors += p.PairErrors
		s.RedirectMsgs += p.RedirectMsgs
		s.RedirectBytes += p.RedirectBytes
		s.MissMsgs += p.MissMsgs
		s.MissBytes += p.MissBytes
		s.PassMsgs += p.PassMsgs
		s.PassBytes += p.PassBytes
		s.FwdArmed += p.FwdArmed
		s.FwdMsgs += p.FwdMsgs
		s.FwdBytes += p.FwdBytes
	}
	return s, nil
}
