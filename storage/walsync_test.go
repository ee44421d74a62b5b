package storage

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
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
		t.Skip("the raft log syncs Badger's files itself only on Linux")
	}
}

// newestFile returns the name of the file in dir with the highest number
// before ext, as Badger numbers its memtable and value log files.
func newestFile(t *testing.T, dir, ext string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	newest, best := "", -1
	for _, e := range entries {
		if fid, ok := fileID(e.Name(), ext); ok && fid > best {
			newest, best = e.Name(), fid
		}
	}
	if newest == "" {
		t.Fatalf("no *%s file in %s", ext, dir)
	}
	return newest
}

// An append is made durable by the journal (journal.go): StoreLogs syncs
// the journal, and of Badger's files only the value log when an entry went
// there, before the journal. Set and prefix deletes sync Badger's newest
// memtable file. If a Badger upgrade names or uses its files differently, this
// fails instead of writes going unsynced.
func TestRaftStoreSyncsBadgersFiles(t *testing.T) {
	skipWithoutOwnSync(t)
	synced := recordSyncs(t)
	// No checkpoint by size (TestRaftStoreJournalCheckpointsBySize has
	// those): an append syncs the journal alone.
	orig := journalMaxBytes
	journalMaxBytes = 1 << 40
	t.Cleanup(func() { journalMaxBytes = orig })
	dir := t.TempDir()
	s, err := OpenRaftStore(dir, testLogger(t), Options{})
	if err != nil {
		t.Fatalf("OpenRaftStore: %v", err)
	}
	idx := uint64(1)
	appendSmall := func() {
		t.Helper()
		logs := make([]*raft.Log, 256)
		for i := range logs {
			logs[i] = &raft.Log{Index: idx, Term: 1, Type: raft.LogCommand, Data: bytes.Repeat([]byte{byte(idx)}, 300)}
			idx++
		}
		if err := s.StoreLogs(logs); err != nil {
			t.Fatalf("StoreLogs: %v", err)
		}
	}
	// checkAppend checks the syncs of an append of small entries, and
	// returns the newest memtable file.
	checkAppend := func(what string) string {
		t.Helper()
		if got := synced(); !slices.Equal(got, []string{journalFile}) {
			t.Fatalf("%s: synced %v, want the journal only", what, got)
		}
		return newestFile(t, dir, memFileExt)
	}
	checkNewest := func(what string) {
		t.Helper()
		got, want := synced(), newestFile(t, dir, memFileExt)
		if len(got) == 0 || got[len(got)-1] != want {
			t.Fatalf("%s: synced %v, want the newest memtable file %s last", what, got, want)
		}
	}

	synced()
	seen := map[string]bool{}
	mem := ""
	for i := 0; len(seen) < 4; i++ {
		if i == 2000 {
			t.Fatalf("Badger used %d memtable files for %d entries; want 4", len(seen), idx-1)
		}
		appendSmall()
		mem = checkAppend("StoreLogs")
		seen[mem] = true
	}

	if err := s.Set([]byte("CurrentTerm"), []byte{0, 0, 0, 0, 0, 0, 0, 7}); err != nil {
		t.Fatalf("Set: %v", err)
	}
	checkNewest("Set")
	if err := s.DeleteRange(1, 512); err != nil {
		t.Fatalf("DeleteRange: %v", err)
	}
	checkNewest("DeleteRange of a prefix")

	big := &raft.Log{Index: idx, Term: 1, Type: raft.LogCommand, Data: bytes.Repeat([]byte{'v'}, 4096)}
	idx++
	if err := s.StoreLogs([]*raft.Log{big}); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	got := synced()
	if vlog := newestFile(t, dir, vlogFileExt); !slices.Contains(got, vlog) {
		t.Fatalf("StoreLogs of a %d-byte entry: synced %v, want the value log file %s too", len(big.Data), got, vlog)
	}
	if got[len(got)-1] != journalFile {
		t.Fatalf("StoreLogs of a large entry: synced %v, want the journal last", got)
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = openTestStore(t, dir)
	synced()
	appendSmall()
	checkAppend("StoreLogs after a reopen")
}

func TestWALSyncerFollowsFiles(t *testing.T) {
	skipWithoutOwnSync(t)
	synced := recordSyncs(t)
	dir := t.TempDir()
	touch := func(name string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	remove := func(name string) {
		t.Helper()
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	check := func(what string, want ...string) {
		t.Helper()
		if got := synced(); !slices.Equal(got, want) {
			t.Fatalf("%s: synced %v, want %v", what, got, want)
		}
	}

	if _, err := openWALSyncer(dir); err == nil {
		t.Fatal("openWALSyncer on a directory without a memtable file: no error")
	}

	touch("00007.mem")
	touch("00008.mem")
	touch("000003.vlog")
	w, err := openWALSyncer(dir)
	if err != nil {
		t.Fatalf("openWALSyncer: %v", err)
	}
	defer w.close()
	check("open")

	if err := w.sync(false); err != nil {
		t.Fatal(err)
	}
	check("sync", "00008.mem")

	// A new memtable: the old one is synced once more, then the new one.
	touch("00009.mem")
	if err := w.sync(false); err != nil {
		t.Fatal(err)
	}
	check("after a turnover", "00008.mem", "00009.mem")

	// Two turnovers, the middle file already flushed and deleted, and
	// ours too: found by listing the directory.
	touch("00011.mem")
	remove("00009.mem")
	if err := w.sync(false); err != nil {
		t.Fatal(err)
	}
	check("after two turnovers", "00009.mem", "00011.mem")

	// A full sync covers the value log from the newest file it knew.
	touch("000004.vlog")
	if err := w.sync(true); err != nil {
		t.Fatal(err)
	}
	check("full sync", "000004.vlog", "000003.vlog", "00011.mem")
	touch("000005.vlog")
	if err := w.sync(true); err != nil {
		t.Fatal(err)
	}
	check("second full sync", "000005.vlog", "000004.vlog", "00011.mem")

	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	if err := w.sync(false); err == nil {
		t.Fatal("sync after close: no error")
	}
}

// Value log GC moves live entries to another file and deletes the old one:
// the moved entries are synced while the old file still exists.
func TestRaftStoreGCSyncsBeforeDeleting(t *testing.T) {
	skipWithoutOwnSync(t)
	dir := t.TempDir()
	s, err := OpenRaftStore(dir, testLogger(t), Options{})
	if err != nil {
		t.Fatalf("OpenRaftStore: %v", err)
	}
	// Over one value log file (64 MiB) of large entries.
	const n, size = 1200, 64 << 10
	for i := uint64(1); i <= n; i += 8 {
		logs := make([]*raft.Log, 8)
		for j := range logs {
			logs[j] = &raft.Log{Index: i + uint64(j), Term: 1, Type: raft.LogCommand, Data: bytes.Repeat([]byte{byte(i)}, size)}
		}
		if err := s.StoreLogs(logs); err != nil {
			t.Fatalf("StoreLogs: %v", err)
		}
	}
	oldest := func() string {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if _, ok := fileID(e.Name(), vlogFileExt); ok {
				return e.Name()
			}
		}
		return ""
	}
	first := oldest()
	if first == "" {
		t.Fatalf("no value log file in %s after %d entries of %d bytes", dir, n, size)
	}
	if err := s.DeleteRange(1, n-20); err != nil {
		t.Fatalf("DeleteRange: %v", err)
	}
	// Each close flushes the memtable to a table; with a few tables a
	// compaction turns the deletes into garbage counts for GC.
	for i := range 4 {
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if s, err = OpenRaftStore(dir, testLogger(t), Options{}); err != nil {
			t.Fatalf("OpenRaftStore: %v", err)
		}
		if err := s.Set([]byte("k"), []byte{byte(i)}); err != nil {
			t.Fatalf("Set: %v", err)
		}
	}
	t.Cleanup(func() { s.Close() })
	if err := s.db.Flatten(1); err != nil {
		t.Fatalf("Flatten: %v", err)
	}

	var mu sync.Mutex
	var syncedWhileOld []bool
	orig := syncFile
	syncFile = func(f *os.File) error {
		if strings.HasSuffix(f.Name(), vlogFileExt) {
			_, err := os.Stat(filepath.Join(dir, first))
			mu.Lock()
			syncedWhileOld = append(syncedWhileOld, err == nil)
			mu.Unlock()
		}
		return orig(f)
	}
	t.Cleanup(func() { syncFile = orig })
	s.RunGC()
	if _, err := os.Stat(filepath.Join(dir, first)); err == nil {
		t.Fatalf("value log GC left %s: the test did not make it rewrite", first)
	}
	if len(syncedWhileOld) == 0 || slices.Contains(syncedWhileOld, false) {
		t.Fatalf("value log syncs, and whether %s still existed at each: %v", first, syncedWhileOld)
	}
	for i := uint64(n - 19); i <= n; i++ {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d) after GC: %v", i, err)
		}
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
