package storage

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// A store left open by a process that died comes back as it was (the
// kernel kept what it was given); one left open across a reboot before it
// ever took a checkpoint comes back empty, to be rebuilt from raft; one
// closed cleanly comes back as it was even after a reboot.
func TestKVUncleanStop(t *testing.T) {
	defer func(f func() string) { bootID = f }(bootID)
	boot := "boot-1"
	bootID = func() string { return boot }

	crash := func(s *KV) { t.Helper(); kvCrash(t, s) }

	dir := t.TempDir()
	s := kvOpen(t, dir)
	kvFill(t, s, 1, "a", "1", "b", "1")
	kvFill(t, s, 2, "a", "2")
	want := kvDump(t, s, 0)
	crash(s)

	s = kvOpen(t, dir) // same boot: nothing lost
	if got := kvDump(t, s, 0); s.AppliedIndex() != 2 || !reflect.DeepEqual(got, want) {
		t.Fatalf("after a process crash: applied %d, %q; want 2, %q", s.AppliedIndex(), got, want)
	}
	crash(s)

	boot = "boot-2"
	s = kvOpen(t, dir)
	if got := kvDump(t, s, 0); s.AppliedIndex() != 0 || len(got) != 0 {
		t.Fatalf("after a reboot: applied %d, %q; want an empty store", s.AppliedIndex(), got)
	}
	kvFill(t, s, 1, "c", "1")
	kvClose(t, s)

	boot = "boot-3"
	s = kvOpen(t, dir)
	if s.AppliedIndex() != 1 {
		t.Fatalf("after a clean close and a reboot: applied %d, want 1", s.AppliedIndex())
	}

	// Without a boot id nothing is ever dropped.
	crash(s)
	boot = ""
	s = kvOpen(t, dir)
	if s.AppliedIndex() != 1 {
		t.Fatalf("without a boot id: applied %d, want 1", s.AppliedIndex())
	}
}

// A store open across a reboot that had taken a checkpoint rolls back to
// it: what it holds above may have lost values in any order, and raft's
// replay rewrites it. Until the replay has passed all the store may have
// held, a crash rolls back again.
func TestKVRollbackToCheckpoint(t *testing.T) {
	defer func(f func() string) { bootID = f }(bootID)
	boot := "boot-1"
	bootID = func() string { return boot }
	crash := func(s *KV) { t.Helper(); kvCrash(t, s) }
	big := func(v string) string { return v + strings.Repeat("-", 100) } // in the value log
	// The entries raft holds, by index.
	entries := map[uint64]func(b *Batch){
		1: func(b *Batch) { kvPut(t, b, "a", big("1")); kvPut(t, b, "b", "1") },
		2: func(b *Batch) { kvPut(t, b, "a", big("2")) },
		3: func(b *Batch) { kvPut(t, b, "c", big("3")) },
		4: func(b *Batch) { kvPut(t, b, "a", big("4")); kvPut(t, b, "b", "4") },
		5: func(b *Batch) { kvDel(t, b, "b", "", false) },
		6: func(b *Batch) { kvPut(t, b, "c", big("6")); kvPut(t, b, "d", "6") },
	}
	ref := kvNew(t)
	for i := uint64(1); i <= 6; i++ {
		kvApply(t, ref, i, entries[i])
	}
	wantSame := func(s *KV) {
		t.Helper()
		for rev := uint64(1); rev <= 6; rev++ {
			if got, want := kvDump(t, s, rev), kvDump(t, ref, rev); !reflect.DeepEqual(got, want) {
				t.Fatalf("at %d:\n got %q\nwant %q", rev, got, want)
			}
		}
	}

	dir := t.TempDir()
	s := kvOpen(t, dir)
	for i := uint64(1); i <= 3; i++ {
		kvApply(t, s, i, entries[i])
	}
	if idx, err := s.Checkpoint(); err != nil || idx != 3 {
		t.Fatalf("Checkpoint = %d, %v; want 3", idx, err)
	}
	// What the disk may hold after the power cut: entry 4 with its values
	// lost (here: wrong), 5 missing, 6 whole.
	kvApply(t, s, 4, func(b *Batch) { kvPut(t, b, "a", big("lost")); kvPut(t, b, "b", "lost") })
	kvApply(t, s, 6, entries[6])
	crash(s)

	boot = "boot-2"
	s = kvOpen(t, dir)
	if s.AppliedIndex() != 3 {
		t.Fatalf("after a reboot: applied %d, want the checkpoint, 3", s.AppliedIndex())
	}
	if got, want := kvDump(t, s, 3), kvDump(t, ref, 3); !reflect.DeepEqual(got, want) {
		t.Fatalf("at the checkpoint:\n got %q\nwant %q", got, want)
	}
	// A crash part way through the replay: back to the checkpoint again.
	kvApply(t, s, 4, entries[4])
	crash(s)
	s = kvOpen(t, dir)
	if s.AppliedIndex() != 3 {
		t.Fatalf("after a crash during the replay: applied %d, want 3", s.AppliedIndex())
	}
	for i := uint64(4); i <= 6; i++ {
		kvApply(t, s, i, entries[i])
	}
	wantSame(s)
	if idx, err := s.Checkpoint(); err != nil || idx != 6 {
		t.Fatalf("Checkpoint = %d, %v; want 6", idx, err)
	}
	if _, err := os.Stat(filepath.Join(dir, replayFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("replay marker still there once the replay is through: %v", err)
	}
	// Through: a crash keeps what is there.
	crash(s)
	s = kvOpen(t, dir)
	if s.AppliedIndex() != 6 {
		t.Fatalf("after the replay and a crash: applied %d, want 6", s.AppliedIndex())
	}
	wantSame(s)
}

// A compaction may not let Badger drop versions above the last checkpoint:
// a replay from there reads them.
func TestKVDiscardStaysAtCheckpoint(t *testing.T) {
	s := kvNew(t)
	kvFill(t, s, 1, "a", "1")
	if _, err := s.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	kvFill(t, s, 2, "a", "2")
	kvFill(t, s, 3, "a", "3")
	s.compacted.Store(3)
	s.setDiscardTs()
	if ts := s.discardTs.Load(); ts != 1 {
		t.Fatalf("discard timestamp %d with a checkpoint at 1, want 1", ts)
	}
	if err := s.CompactNow(3, false); err != nil {
		t.Fatal(err)
	}
	if ts := s.discardTs.Load(); ts != 2 {
		t.Fatalf("discard timestamp %d after compacting to 3, want 2", ts)
	}
}

// kvCrash closes Badger but leaves the marker and takes no checkpoint, as
// a process that died.
func kvCrash(t *testing.T, s *KV) {
	t.Helper()
	delete(kvOpenStores, s)
	if err := s.files.close(); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
}
