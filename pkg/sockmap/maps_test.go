package sockmap

import (
	"net/netip"
	"testing"
	"time"
)

func manyServices(n, idBase int) []Service {
	out := make([]Service, n)
	for i := range out {
		out[i] = Service{Addr: netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)}), Port: 80, ID: uint32(idBase + i)}
	}
	return out
}

// TestSyncServicesLarge syncs more entries than one batch, then a diff that
// updates, removes and adds some, and checks the table against the list
// both through the batch reader and a plain iteration.
func TestSyncServicesLarge(t *testing.T) {
	s := newSandbox(t, Accel{})
	check := func(want []Service) {
		t.Helper()
		byKey := map[meshletSvcKey]uint32{}
		for _, w := range want {
			k, err := w.key()
			if err != nil {
				t.Fatal(err)
			}
			byKey[k] = w.ID
		}
		batch, err := readServices(s.dp.objs.MltServices)
		if err != nil {
			t.Fatal(err)
		}
		plain, err := iterateServices(s.dp.objs.MltServices)
		if err != nil {
			t.Fatal(err)
		}
		if len(batch) != len(want) || len(plain) != len(want) {
			t.Fatalf("table has %d entries (iterated: %d), want %d", len(batch), len(plain), len(want))
		}
		for k, id := range byKey {
			if batch[k].Id != id || plain[k].Id != id {
				t.Fatalf("entry %v:%d has id %d (iterated: %d), want %d", netToIP4(k.Addr), k.Port, batch[k].Id, plain[k].Id, id)
			}
		}
	}
	first := manyServices(serviceBatch+1000, 1)
	if err := s.dp.SyncServices(first); err != nil {
		t.Fatal(err)
	}
	check(first)
	// Drop the first 100, change the ids of the next 100, add 50.
	next := append([]Service(nil), first[100:]...)
	for i := 0; i < 100; i++ {
		next[i].ID += 100000
	}
	next = append(next, Service{Port: 9000, ID: 7})
	for i := 0; i < 49; i++ {
		next = append(next, Service{Addr: netip.AddrFrom4([4]byte{10, 97, 0, byte(i + 1)}), Port: 443, ID: uint32(200000 + i)})
	}
	if err := s.dp.SyncServices(next); err != nil {
		t.Fatal(err)
	}
	check(next)
	// Timing at TestBenchXDS size (logged; -v shows it).
	big := manyServices(10000, 1)
	start := time.Now()
	if err := s.dp.SyncServices(big); err != nil {
		t.Fatal(err)
	}
	full := time.Since(start)
	big[5000].ID = 99999
	start = time.Now()
	if err := s.dp.SyncServices(big); err != nil {
		t.Fatal(err)
	}
	t.Logf("SyncServices of 10000 entries: %v into a table of %d; %v when one changed", full, len(next), time.Since(start))
	check(big)
	if err := s.dp.SyncServices(nil); err != nil {
		t.Fatal(err)
	}
	check(nil)
}
