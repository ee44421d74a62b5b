package storage

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
)

// The journal ends at the first record cut short, failing its checksum or
// of another generation; the records before it are read, nothing after.
func TestJournalReadStopsAtTornRecord(t *testing.T) {
	j := journal{gen: 3}
	j.add([]journalEntry{{index: 6, data: []byte("six")}, {index: 7, data: []byte("seven")}})
	j.add([]journalEntry{{index: 8, data: []byte("eight")}})
	whole := appendRecord(nil, recCheckpoint, 3, []byte{5, 0})
	var lastRec []byte
	for _, f := range j.pending {
		lastRec = appendRecord(nil, recLogs, 3, f)
		whole = append(whole, lastRec...)
	}
	stale := appendRecord(nil, recLogs, 2, j.pending[1])

	for _, tc := range []struct {
		name  string
		data  []byte
		want  []uint64
		check uint64
	}{
		{"whole", whole, []uint64{6, 7, 8}, 5},
		{"last record cut", whole[:len(whole)-2], []uint64{6, 7}, 5},
		{"only a header left", whole[:len(whole)-len(lastRec)+4], []uint64{6, 7}, 5},
		{"last record corrupt", append(bytes.Clone(whole[:len(whole)-1]), whole[len(whole)-1]^1), []uint64{6, 7}, 5},
		{"zeros after", append(bytes.Clone(whole), make([]byte, 64)...), []uint64{6, 7, 8}, 5},
		{"an older generation after", append(bytes.Clone(whole), stale...), []uint64{6, 7, 8}, 5},
		{"no checkpoint first", whole[len(whole)-len(lastRec):], nil, 0},
		{"empty", nil, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := readJournal(bytes.NewReader(tc.data))
			if err != nil {
				t.Fatalf("readJournal: %v", err)
			}
			var got []uint64
			for _, e := range c.entries {
				got = append(got, e.index)
			}
			if !equalUints(got, tc.want) || c.checkpoint != tc.check {
				t.Fatalf("read entries %v after checkpoint %d, want %v after %d", got, c.checkpoint, tc.want, tc.check)
			}
		})
	}

	// A whole record this build cannot read is an error, not an end: part
	// of the journal would be lost without a word.
	bad := append(bytes.Clone(whole), appendRecord(nil, 99, 3, nil)...)
	if _, err := readJournal(bytes.NewReader(bad)); err == nil {
		t.Fatal("readJournal of a record of unknown kind: no error")
	}
}

func equalUints(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// openUntilClosed opens the store in dir for a test that closes it itself
// (closeStore), to look at or replace its files in between.
func openUntilClosed(t *testing.T, dir string) *RaftStore {
	t.Helper()
	s, err := OpenRaftStore(dir, testLogger(t), Options{})
	if err != nil {
		t.Fatalf("OpenRaftStore: %v", err)
	}
	return s
}

func closeStore(t *testing.T, s *RaftStore) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// readJournalFile returns the journal file of the store in dir.
func readJournalFile(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, journalFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// putJournalFile replaces the journal file of the (closed) store in dir:
// what a crash would have left there.
func putJournalFile(t *testing.T, dir string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, journalFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// fakeBoots makes bootID return *boot: a test powers the machine off
// between two runs of a store by changing it while the store is closed.
// Open replays the journal only after a reboot.
func fakeBoots(t *testing.T) *string {
	t.Helper()
	orig := bootID
	boot := "boot-1"
	bootID = func() string { return boot }
	t.Cleanup(func() { bootID = orig })
	return &boot
}

// loseInBadger deletes entries from Badger behind the store's back and
// closes it: what a power loss does to writes Badger's files did not have
// on disk yet.
func loseInBadger(t *testing.T, dir string, indexes ...uint64) {
	t.Helper()
	s := openUntilClosed(t, dir)
	err := s.db.Update(func(txn *badger.Txn) error {
		for _, i := range indexes {
			if err := txn.Delete(logKey(i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("delete in Badger: %v", err)
	}
	closeStore(t, s)
}

// Entries the journal holds come back at open when Badger lost them, and
// entries Badger kept past the journal's end stay unless a gap comes
// before them.
func TestRaftStoreReplaysJournal(t *testing.T) {
	skipWithoutOwnSync(t)
	boot := fakeBoots(t)
	dir := t.TempDir()
	s := openUntilClosed(t, dir)
	if err := s.StoreLogs(mkLogs(1, 10)); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	upTo10 := readJournalFile(t, dir)
	if err := s.StoreLogs(mkLogs(11, 20)); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	upTo20 := readJournalFile(t, dir)
	closeStore(t, s)

	// Badger lost 11-20 in a power loss; the journal had them.
	loseInBadger(t, dir, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
	putJournalFile(t, dir, upTo20)
	*boot = "boot-2"
	s = openTestStore(t, dir)
	assertBounds(t, s, 1, 20)
	assertPresent(t, s, 1, 10, 11, 15, 20)
	closeStore(t, s)

	// The journal ends at 10 and Badger has 11-20 whole (the kernel had
	// written them back): all of them stay.
	putJournalFile(t, dir, upTo10)
	s = openTestStore(t, dir)
	assertBounds(t, s, 1, 20)
	closeStore(t, s)

	// The journal ends at 10 and Badger lost 13: 11 and 12 join the log,
	// 13-20 go (no caller heard of them: they were not in the journal).
	loseInBadger(t, dir, 13)
	putJournalFile(t, dir, upTo10)
	*boot = "boot-3"
	s = openTestStore(t, dir)
	assertBounds(t, s, 1, 12)
	assertPresent(t, s, 1, 11, 12)
	assertMissing(t, s, 13, 14, 20)
}

// A follower's suffix delete starts the journal over: replaying it can
// never bring back the entries dropped after the ones that replaced them.
func TestRaftStoreJournalForgetsDeletedSuffix(t *testing.T) {
	skipWithoutOwnSync(t)
	boot := fakeBoots(t)
	dir := t.TempDir()
	s := openUntilClosed(t, dir)
	if err := s.StoreLogs(mkLogs(1, 20)); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	if err := s.DeleteRange(15, 20); err != nil {
		t.Fatalf("DeleteRange: %v", err)
	}
	newer := make([]*raft.Log, 0, 3)
	for i := uint64(15); i <= 17; i++ {
		l := mkLog(i)
		l.Term = 9
		l.Data = []byte("newer")
		newer = append(newer, l)
	}
	if err := s.StoreLogs(newer); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	crashed := readJournalFile(t, dir)
	c, err := readJournal(bytes.NewReader(crashed))
	if err != nil {
		t.Fatalf("readJournal: %v", err)
	}
	if c.checkpoint != 14 || len(c.entries) != 3 || c.entries[0].index != 15 {
		t.Fatalf("journal after the delete: checkpoint %d, %d entries; want checkpoint 14 and entries 15-17 only", c.checkpoint, len(c.entries))
	}
	closeStore(t, s)

	loseInBadger(t, dir, 15, 16, 17)
	putJournalFile(t, dir, crashed)
	*boot = "boot-2"
	s = openTestStore(t, dir)
	assertBounds(t, s, 1, 17)
	for _, want := range newer {
		var l raft.Log
		if err := s.GetLog(want.Index, &l); err != nil {
			t.Fatalf("GetLog(%d): %v", want.Index, err)
		}
		assertLogEqual(t, &l, want)
	}
}

// Past journalMaxBytes a sync checkpoints: the journal stays small and
// nothing is lost.
func TestRaftStoreJournalCheckpointsBySize(t *testing.T) {
	skipWithoutOwnSync(t)
	orig := journalMaxBytes
	journalMaxBytes = 4 << 10
	t.Cleanup(func() { journalMaxBytes = orig })
	boot := fakeBoots(t)

	dir := t.TempDir()
	s := openUntilClosed(t, dir)
	for i := uint64(0); i < 100; i++ {
		if err := s.StoreLogs(mkLogs(i*10+1, i*10+10)); err != nil {
			t.Fatalf("StoreLogs: %v", err)
		}
		// The file is reused in place: the bound is on what the current
		// generation holds, and the file grows past it by one write at most.
		if n := s.journal.size; n > journalMaxBytes {
			t.Fatalf("journal holds %d bytes after a sync, over the %d bound", n, journalMaxBytes)
		}
		if n := len(readJournalFile(t, dir)); n > int(journalMaxBytes)+1<<10 {
			t.Fatalf("journal file of %d bytes after a sync, over the %d bound and a write", n, journalMaxBytes)
		}
	}
	crashed := readJournalFile(t, dir)
	closeStore(t, s)
	c, err := readJournal(bytes.NewReader(crashed))
	if err != nil {
		t.Fatalf("readJournal: %v", err)
	}
	if c.checkpoint == 0 {
		t.Fatal("the journal never started over")
	}
	putJournalFile(t, dir, crashed)
	*boot = "boot-2"
	s = openTestStore(t, dir)
	assertBounds(t, s, 1, 1000)
	assertPresent(t, s, 1, 500, c.checkpoint, 1000)
}

// Entries below the first index (a prefix delete after they were journaled)
// stay deleted when the journal is replayed.
func TestRaftStoreJournalKeepsPrefixDeleted(t *testing.T) {
	skipWithoutOwnSync(t)
	boot := fakeBoots(t)
	dir := t.TempDir()
	s := openUntilClosed(t, dir)
	if err := s.StoreLogs(mkLogs(1, 20)); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	if err := s.DeleteRange(1, 10); err != nil {
		t.Fatalf("DeleteRange: %v", err)
	}
	crashed := readJournalFile(t, dir)
	closeStore(t, s)
	putJournalFile(t, dir, crashed)
	*boot = "boot-2"
	s = openTestStore(t, dir)
	assertBounds(t, s, 11, 20)
	assertMissing(t, s, 1, 10)
}

// Without a reboot since the journal's checkpoint (a process crash), the
// page cache kept every write Badger was given, so open does not write the
// journal back: an entry gone from Badger all the same (here removed
// behind the store's back) was lost to damage, and open says so rather
// than start with a log that lost an entry raft was told was stored.
func TestRaftStoreJournalNotReplayedWithoutReboot(t *testing.T) {
	skipWithoutOwnSync(t)
	fakeBoots(t)
	dir := t.TempDir()
	s := openUntilClosed(t, dir)
	if err := s.StoreLogs(mkLogs(1, 10)); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	crashed := readJournalFile(t, dir)
	closeStore(t, s)
	loseInBadger(t, dir, 10)
	putJournalFile(t, dir, crashed)
	_, err := OpenRaftStore(dir, testLogger(t), Options{})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "entries up to 10") {
		t.Fatalf("open after Badger lost entry 10 without a reboot: %v, want a corruption error", err)
	}
	if _, err := os.Stat(filepath.Join(dir, openingFile)); err == nil {
		t.Fatal("a refused open left its open marker behind")
	}
}
