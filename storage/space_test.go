package storage

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func TestSizingFor(t *testing.T) {
	if got := SizingFor(100<<30, 1<<20); got != DefaultSizing {
		t.Fatalf("a large disk: %+v, want the defaults %+v", got, DefaultSizing)
	}
	small := SizingFor(64<<20, 1<<20)
	want := Sizing{
		StateMemTable: 1 << 20,
		StateValueLog: 1<<20 + 64<<10, // above the largest value
		RaftSegment:   1 << 20,
		BlockCache:    DefaultSizing.BlockCache,
		IndexCache:    DefaultSizing.IndexCache,
	}
	if small != want {
		t.Fatalf("a 64 MiB disk: %+v, want %+v", small, want)
	}
	if mid := SizingFor(1<<30, 1<<20); mid.StateMemTable != 4<<20 || mid.RaftSegment != 16<<20 {
		t.Fatalf("a 1 GiB disk: %+v, want a quarter of the defaults", mid)
	}
}

func TestForDataGroup(t *testing.T) {
	g := DefaultSizing.ForDataGroup(1 << 20)
	want := Sizing{StateMemTable: 2 << 20, StateValueLog: 8 << 20, RaftSegment: 8 << 20, BlockCache: 4 << 20, IndexCache: 2 << 20}
	if g != want {
		t.Fatalf("a full-size node's group: %+v, want an eighth of the defaults %+v", g, want)
	}
	small := SizingFor(64<<20, 1<<20).ForDataGroup(1 << 20)
	if small.StateMemTable != 1<<20 || small.RaftSegment != 1<<20 || small.StateValueLog != 1<<20+64<<10 {
		t.Fatalf("a 64 MiB disk's group: %+v, want files of 1 MiB, value log files above the largest value", small)
	}
	if big := DefaultSizing.ForDataGroup(20 << 20); big.StateValueLog != 20<<20+64<<10 {
		t.Fatalf("20 MiB values: value log files of %d bytes", big.StateValueLog)
	}
}

func TestKVHash(t *testing.T) {
	a, b := kvNew(t), kvNew(t)
	for _, s := range []*KV{a, b} {
		kvApply(t, s, 1, func(bt *Batch) {
			kvPut(t, bt, "k1", "v1")
			kvPut(t, bt, "k2", "v2")
			if err := bt.GrantLease(Lease{ID: 7, TTL: 10}); err != nil {
				t.Fatal(err)
			}
		})
		kvApply(t, s, 2, func(bt *Batch) { kvDel(t, bt, "k1", "", false) })
		kvApply(t, s, 3, func(bt *Batch) { kvPut(t, bt, "k3", "v3") })
	}
	for rev := uint64(1); rev <= 3; rev++ {
		ha, err := a.Hash(rev)
		if err != nil {
			t.Fatal(err)
		}
		hb, err := b.Hash(rev)
		if err != nil {
			t.Fatal(err)
		}
		if ha != hb {
			t.Fatalf("equal states at %d hash apart: %+v and %+v", rev, ha, hb)
		}
	}
	h1, _ := a.Hash(1)
	h3, _ := a.Hash(3)
	if h1.Hash == h3.Hash || h1.Keys != 2 || h3.Keys != 2 {
		t.Fatalf("hashes at 1 and 3: %+v, %+v", h1, h3)
	}

	// Each part of a key counts: a value, a version, a lease changed
	// behind raft's back, at a revision already applied.
	changes := map[string]func(bt *Batch){
		"value":   func(bt *Batch) { kvPut(t, bt, "k3", "other") },
		"lease":   func(bt *Batch) { bt.Put([]byte("k2"), []byte("v2"), 7, false) },
		"new key": func(bt *Batch) { kvPut(t, bt, "k9", "v9") },
		"lease record": func(bt *Batch) {
			if err := bt.GrantLease(Lease{ID: 8, TTL: 10}); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, change := range changes {
		t.Run(name, func(t *testing.T) {
			c := kvNew(t)
			kvApply(t, c, 1, func(bt *Batch) {
				kvPut(t, bt, "k1", "v1")
				kvPut(t, bt, "k2", "v2")
				if err := bt.GrantLease(Lease{ID: 7, TTL: 10}); err != nil {
					t.Fatal(err)
				}
			})
			kvApply(t, c, 2, func(bt *Batch) { kvDel(t, bt, "k1", "", false) })
			kvApply(t, c, 3, func(bt *Batch) { kvPut(t, bt, "k3", "v3") })
			kvApply(t, c, 3, change) // rewrites revision 3
			hc, err := c.Hash(3)
			if err != nil {
				t.Fatal(err)
			}
			if hc.Hash == h3.Hash {
				t.Fatalf("a state changed behind raft's back (%s) hashes like the others", name)
			}
		})
	}

	if _, err := a.Hash(4); !errors.Is(err, ErrFutureRevision) {
		t.Fatalf("hash past the applied revision: %v", err)
	}
	kvApply(t, a, 4, func(bt *Batch) {
		if err := bt.Compact(3, false); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := a.Hash(2); !errors.Is(err, ErrCompacted) {
		t.Fatalf("hash below the compacted revision: %v", err)
	}
	if h, err := a.Hash(4); err != nil || h.Compacted != 3 {
		t.Fatalf("hash at 4 after compacting to 3: %+v, %v", h, err)
	}
}

func TestKVAlarms(t *testing.T) {
	dir := t.TempDir()
	s := kvOpen(t, dir)
	kvApply(t, s, 1, func(b *Batch) {
		for i, m := range []string{"n2", "n1"} {
			if err := b.SetAlarm(Alarm{Type: 1, Member: m, Reason: fmt.Sprintf("reason %d", i)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.SetAlarm(Alarm{Type: 2, Member: "n3"}); err != nil {
			t.Fatal(err)
		}
	})
	kvApply(t, s, 2, func(b *Batch) {
		if err := b.ClearAlarm(1, "n2"); err != nil {
			t.Fatal(err)
		}
	})
	want := []Alarm{{Type: 1, Member: "n1", Reason: "reason 1"}, {Type: 2, Member: "n3"}}
	check := func(s *KV, when string) {
		t.Helper()
		got, err := s.Alarms()
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("alarms %s: %v, want %v", when, got, want)
		}
	}
	check(s, "as applied")
	// Alarms are state: they survive a restart and travel in snapshots,
	// and user keys never see them.
	kvClose(t, s)
	s = kvOpen(t, dir)
	check(s, "after a restart")
	var snap bytes.Buffer
	if err := s.Snapshot(&snap, s.AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	other := kvNew(t)
	if err := other.Restore(&snap); err != nil {
		t.Fatal(err)
	}
	check(other, "after a snapshot restore")
	if res := kvRange(t, other, 0, "", "\x00", RangeOptions{}); res.Count != 0 {
		t.Fatalf("alarms show as user keys: %v", kvKeys(res.KVs))
	}
}
