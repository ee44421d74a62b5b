package storage

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// recordSyncs makes syncFile note the base name of every file it syncs,
// and returns a function that hands over the names noted since its last
// call. Tests using it must not run in parallel with others.
func recordSyncs(t *testing.T) func() []string {
	t.Helper()
	var mu sync.Mutex
	var names []string
	orig := syncFile
	syncFile = func(f *os.File) error {
		mu.Lock()
		names = append(names, filepath.Base(f.Name()))
		mu.Unlock()
		return orig(f)
	}
	t.Cleanup(func() { syncFile = orig })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		n := names
		names = nil
		return n
	}
}

func skipWithoutOwnSync(t *testing.T) {
	t.Helper()
	if !ownSync {
		t.Skip("checkpoints sync Badger's files by name only on Linux")
	}
}

// A checkpoint of the state store syncs its memtable files and value log
// files, and after a restore (whose DropAll numbers value log files from 1
// again) the new files too.
func TestKVCheckpointSyncsBadgersFiles(t *testing.T) {
	skipWithoutOwnSync(t)
	dir := t.TempDir()
	s := kvOpen(t, dir)
	big := strings.Repeat("v", 200) // in the value log
	kvFill(t, s, 1, "a", big)
	kvClose(t, s)
	s = kvOpen(t, dir) // Badger starts a new value log file on open
	kvFill(t, s, 2, "b", big)
	synced := recordSyncs(t)
	if _, err := s.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	got := synced()
	mems, vlogs, err := (&walSyncer{dir: dir}).list()
	if err != nil {
		t.Fatal(err)
	}
	if len(vlogs) < 2 {
		t.Fatalf("value log files %v: the test meant to have two", vlogs)
	}
	for _, f := range append(mems, vlogs[0]) {
		if !slices.Contains(got, f.name) {
			t.Fatalf("checkpoint synced %q, not %s", got, f.name)
		}
	}
	newest := vlogs[0].fid

	var snap bytes.Buffer
	if err := s.Snapshot(&snap, s.AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(&snap); err != nil {
		t.Fatal(err)
	}
	got = synced()
	_, vlogs, err = (&walSyncer{dir: dir}).list()
	if err != nil {
		t.Fatal(err)
	}
	if vlogs[0].fid >= newest {
		t.Fatalf("value log files after the restore %v: the test meant them numbered from 1 again", vlogs)
	}
	for _, f := range vlogs {
		if !slices.Contains(got, f.name) {
			t.Fatalf("the restore's checkpoint synced %q, not %s", got, f.name)
		}
	}
}
