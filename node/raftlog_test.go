package node

import (
	"bytes"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/storage/diskspace"
)

// fakeDisk is a filesystem whose free space a test sets.
type fakeDisk struct{ avail atomic.Uint64 }

func (d *fakeDisk) stat(string) (diskspace.FS, error) {
	return diskspace.FS{Total: 1 << 40, Avail: d.avail.Load()}, nil
}

// The raft log refuses appends below the disk's hard margin, before it
// writes anything, and takes them again once there is space; its stable
// store is never refused (raft panics on its errors). Its next segment is
// in the hard margin.
func TestRaftLogRefusesAppendsBelowHardMargin(t *testing.T) {
	dir := t.TempDir()
	disk := &fakeDisk{}
	disk.avail.Store(1 << 40)
	g, err := diskspace.New(diskspace.Config{Dir: dir, Stat: disk.stat})
	if err != nil {
		t.Fatal(err)
	}
	const seg = 8 << 20
	l, err := openRaftLog(dir, seg, nil, g, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	st := g.Measure()
	if st.Hard < seg {
		t.Fatalf("hard margin %d, want at least the next segment's %d", st.Hard, seg)
	}
	log := func(i uint64) *raft.Log {
		return &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: bytes.Repeat([]byte{'x'}, 100)}
	}
	if err := l.logs.StoreLog(log(1)); err != nil {
		t.Fatal(err)
	}

	disk.avail.Store(st.Hard - 1)
	g.Measure()
	if err := l.logs.StoreLog(log(2)); !errors.Is(err, diskspace.ErrNoSpace) {
		t.Fatalf("an append below the hard margin: %v, want a no-space error", err)
	}
	if last, _ := l.logs.LastIndex(); last != 1 {
		t.Fatalf("last index %d after a refused append, want 1", last)
	}
	if err := l.store.SetUint64([]byte("CurrentTerm"), 2); err != nil {
		t.Fatalf("stable store below the hard margin: %v", err)
	}

	disk.avail.Store(1 << 40)
	g.Measure()
	if err := l.logs.StoreLog(log(2)); err != nil {
		t.Fatalf("an append once space came back: %v", err)
	}
	var got raft.Log
	if err := l.logs.GetLog(2, &got); err != nil || got.Index != 2 {
		t.Fatalf("entry 2: %+v, %v", got, err)
	}
}
