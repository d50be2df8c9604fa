package sockmap

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Tuple names a TCP socket by its local and remote addresses (IPv4).
type Tuple struct {
	Local, Remote netip.AddrPort
}

// Reverse is the socket at the other end of the same connection.
func (t Tuple) Reverse() Tuple { return Tuple{Local: t.Remote, Remote: t.Local} }

func (t Tuple) key() meshletSockKey {
	return meshletSockKey{
		LocalAddr: ip4ToNet(t.Local.Addr().Unmap()), RemoteAddr: ip4ToNet(t.Remote.Addr().Unmap()),
		LocalPort: t.Local.Port(), RemotePort: t.Remote.Port(),
	}
}

// Forwarding is kernel forwarding of one direction of a proxied connection:
// what the socket From sends goes straight to the far socket, without
// waking the proxy. It arms itself in the kernel at the first send after the
// proxy has relayed every byte From sent before (Relayed), so bytes never
// overtake each other.
type Forwarding struct {
	d   *Datapath
	key meshletSockKey
	val meshletFwd
}

// Forward sets kernel forwarding up for sends of from (an application
// socket paired with the proxy). via is the proxy's socket towards the far
// end; bytes go straight into the receive queue of the socket at via's far
// end, provided everything the proxy sent that socket went that way too
// (the into_app direction); otherwise the proxy keeps relaying.
func (d *Datapath) Forward(from, via Tuple) (*Forwarding, error) {
	for _, a := range []netip.AddrPort{from.Local, from.Remote, via.Local, via.Remote} {
		if !a.Addr().Unmap().Is4() {
			return nil, fmt.Errorf("kernel forwarding: %v is not IPv4", a)
		}
	}
	f := &Forwarding{d: d, key: from.key()}
	f.val.Target = via.Reverse().key()
	f.val.Via = via.key()
	if err := d.objs.MltFwd.Put(f.key, f.val); err != nil {
		return nil, fmt.Errorf("kernel forwarding for %v: %w", from, err)
	}
	return f, nil
}

// Relayed tells the kernel how many bytes the proxy has relayed from the
// socket so far (all of them written to the far end).
func (f *Forwarding) Relayed(n uint64) error {
	f.val.Relayed = n
	if err := f.d.objs.MltFwd.Put(f.key, f.val); err != nil {
		return fmt.Errorf("kernel forwarding: update relayed bytes: %w", err)
	}
	return nil
}

// Armed reports whether the kernel forwards this socket's sends now.
func (f *Forwarding) Armed() bool {
	var st meshletSkState
	if err := f.d.objs.MltSkState.Lookup(f.key, &st); err != nil {
		return false
	}
	return st.Flags&2 != 0 && st.Flags&4 == 0
}

// Stop removes the forwarding entry (the connection ended).
func (f *Forwarding) Stop() {
	if err := f.d.objs.MltFwd.Delete(f.key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		f.d.log.Debug("remove kernel forwarding entry: " + err.Error())
	}
}
