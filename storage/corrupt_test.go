package storage

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
)

// corruptKeys is how many keys corruptState writes: values of 256 bytes,
// so the value log holds them and the tables hold keys and pointers.
const corruptKeys = 5000

func corruptKey(i int) []byte { return fmt.Appendf(nil, "key-%06d", i) }

func corruptValue(i int) []byte {
	return bytes.Repeat(fmt.Appendf(nil, "value-%06d;", i), 20)[:256]
}

// corruptState writes corruptKeys keys to a new store in dir, ten per
// entry, and closes it: closing flushes the memtable to a table.
func corruptState(t *testing.T, dir string) {
	t.Helper()
	s, err := OpenKV(dir, kvTestLogger(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < corruptKeys; i += 10 {
		kvApply(t, s, uint64(i/10+1), func(b *Batch) {
			for j := i; j < i+10; j++ {
				if _, _, err := b.Put(corruptKey(j), corruptValue(j), 0, false); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	if _, err := s.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// filesOf lists the files in dir ending in ext, sorted.
func filesOf(t *testing.T, dir, ext string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ext) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	slices.Sort(out)
	return out
}

// flip inverts n bytes of path from off on.
func flip(t *testing.T, path string, off, n int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if off+n > len(b) {
		t.Fatalf("flip %d bytes at %d: %s has %d", n, off, path, len(b))
	}
	for i := off; i < off+n; i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// wantCorrupt fails unless err is a corruption error naming a file whose
// name ends in suffix.
func wantCorrupt(t *testing.T, err error, suffix string) {
	t.Helper()
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("got %v, want a corruption error", err)
	}
	if p := CorruptPath(err); !strings.HasSuffix(p, suffix) {
		t.Fatalf("corruption error names %q, want a file ending in %q: %v", p, suffix, err)
	}
}

// checkAllKeys reads every key of corruptState from s.
func checkAllKeys(t *testing.T, s *KV) {
	t.Helper()
	res, err := s.Range(0, corruptKey(0), []byte("key-999999"), RangeOptions{})
	if err != nil {
		t.Fatalf("range: %v", err)
	}
	if len(res.KVs) != corruptKeys {
		t.Fatalf("range: %d keys, want %d", len(res.KVs), corruptKeys)
	}
	for i, kv := range res.KVs {
		if !bytes.Equal(kv.Value, corruptValue(i)) {
			t.Fatalf("key %s: value %q", kv.Key, kv.Value)
		}
	}
}

// A flipped block of a table used to open without a word and lose the keys
// after it from every range (Badger checked nothing), or to crash the
// process at every start (Badger's own check at open panics in its own
// goroutine). Open now names the table.
func TestKVOpenFindsDamagedTable(t *testing.T) {
	dir := t.TempDir()
	corruptState(t, dir)
	tables := filesOf(t, dir, ".sst")
	if len(tables) == 0 {
		t.Fatal("no table written")
	}
	fi, err := os.Stat(tables[0])
	if err != nil {
		t.Fatal(err)
	}
	flip(t, tables[0], int(fi.Size()/3), 64)
	_, err = OpenKV(dir, kvTestLogger(t), Options{})
	wantCorrupt(t, err, filepath.Base(tables[0]))
	if _, serr := os.Stat(filepath.Join(dir, openingFile)); serr == nil {
		t.Fatal("a refused open left its open marker")
	}
	// Refused again, the same way, every time.
	_, err = OpenKV(dir, kvTestLogger(t), Options{})
	wantCorrupt(t, err, filepath.Base(tables[0]))
}

func TestKVOpenFindsDamagedManifest(t *testing.T) {
	dir := t.TempDir()
	corruptState(t, dir)
	flip(t, filepath.Join(dir, "MANIFEST"), 10, 8)
	_, err := OpenKV(dir, kvTestLogger(t), Options{})
	wantCorrupt(t, err, "MANIFEST")

	// A missing manifest would make Badger start a new one and delete
	// every table.
	dir = t.TempDir()
	corruptState(t, dir)
	if err := os.Remove(filepath.Join(dir, "MANIFEST")); err != nil {
		t.Fatal(err)
	}
	_, err = OpenKV(dir, kvTestLogger(t), Options{})
	wantCorrupt(t, err, "MANIFEST")
}

// A start that dies inside the storage engine (a panic in one of Badger's
// goroutines, which nothing recovers) leaves the open marker: after two
// such starts in a row the next reports the store corrupt instead of dying
// again. One (a kill while it opened) costs nothing.
func TestKVOpenAfterAStartDiedOpeningIt(t *testing.T) {
	dir := t.TempDir()
	corruptState(t, dir)
	if err := os.WriteFile(filepath.Join(dir, openingFile), []byte("1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := OpenKV(dir, kvTestLogger(t), Options{})
	if err != nil {
		t.Fatalf("one start that died while opening: %v", err)
	}
	s.Close()
	if _, err := os.Stat(filepath.Join(dir, openingFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a store that opened kept its marker: %v", err)
	}
	for range openDeathsLimit {
		if err := beginOpen(dir); err != nil { // a start that dies
			t.Fatal(err)
		}
	}
	_, err = OpenKV(dir, kvTestLogger(t), Options{})
	wantCorrupt(t, err, openingFile)
	if !strings.Contains(err.Error(), "remove") {
		t.Fatalf("the error does not say what to do if the start was only killed: %v", err)
	}
}

func TestKVOpenFindsDamagedCheckpointFile(t *testing.T) {
	dir := t.TempDir()
	corruptState(t, dir)
	if err := os.WriteFile(filepath.Join(dir, checkpointFile), []byte("5x0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenKV(dir, kvTestLogger(t), Options{})
	wantCorrupt(t, err, checkpointFile)

	// A checkpoint past what the store holds: the store lost data it had
	// synced.
	if err := os.WriteFile(filepath.Join(dir, checkpointFile), []byte("100000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = OpenKV(dir, kvTestLogger(t), Options{})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "behind its checkpoint") {
		t.Fatalf("open with a checkpoint past the store: %v", err)
	}
}

// Badger cuts the newest value log file at its first damaged entry as it
// opens, without a word, and then hands out no value for every key whose
// value was after it.
func TestKVOpenFindsValueLogCut(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenKV(dir, kvTestLogger(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte{'v'}, 64<<10)
	for i := range 200 { // 12.5 MiB of values
		kvApply(t, s, uint64(i+1), func(b *Batch) {
			if _, _, err := b.Put(corruptKey(i), big, 0, false); err != nil {
				t.Fatal(err)
			}
		})
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	vlogs := filesOf(t, dir, ".vlog")
	flip(t, vlogs[len(vlogs)-1], 1<<20, 64)
	_, err = OpenKV(dir, kvTestLogger(t), Options{})
	wantCorrupt(t, err, filepath.Base(vlogs[len(vlogs)-1]))
	// Found before Badger opened (and cut) it: refused again.
	_, err = OpenKV(dir, kvTestLogger(t), Options{})
	wantCorrupt(t, err, filepath.Base(vlogs[len(vlogs)-1]))
}

// A damaged value in a value log file used to come back as no value at
// all, with no error (Badger logs the checksum mismatch and hands over
// nothing). Reads now fail with ErrCorrupt naming the file, the damage is
// reported once, and the store stays refused across a restart.
func TestKVReadOfDamagedValueIsCorrupt(t *testing.T) {
	dir := t.TempDir()
	corruptState(t, dir)
	// Open and close once more, so that the file holding the values is
	// no longer the newest (Badger would cut the newest at open).
	s, err := OpenKV(dir, kvTestLogger(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	vlog := filesOf(t, dir, ".vlog")[0]
	flip(t, vlog, 300*1000, 64)

	s = kvOpen(t, dir)
	var reports atomic.Int32
	var reported error
	s.OnCorrupt(func(err error) { reports.Add(1); reported = err })
	_, err = s.Range(0, corruptKey(0), []byte("key-999999"), RangeOptions{})
	wantCorrupt(t, err, filepath.Base(vlog))
	if _, _, err := s.Get(0, corruptKey(999)); err != nil && !errors.Is(err, ErrCorrupt) {
		t.Fatalf("get: %v", err)
	}
	var buf bytes.Buffer
	if err := s.Snapshot(&buf, s.AppliedIndex()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a snapshot of a store with a damaged value: %v, want a corruption error", err)
	}
	if reports.Load() != 1 || !errors.Is(reported, ErrCorrupt) {
		t.Fatalf("OnCorrupt called %d times with %v, want once", reports.Load(), reported)
	}
	kvClose(t, s)
	_, err = OpenKV(dir, kvTestLogger(t), Options{})
	wantCorrupt(t, err, damageMarkerFile)
}

// Reset sets the damaged files aside and leaves an empty store that a
// snapshot of a healthy one fills; watchers end with the cause.
func TestKVResetAndRestore(t *testing.T) {
	good := t.TempDir()
	corruptState(t, good)
	src := kvOpen(t, good)
	var copy bytes.Buffer
	if err := src.Snapshot(&copy, src.AppliedIndex()); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(t.TempDir(), "kv")
	corruptState(t, dir)
	s := kvOpen(t, dir)
	w, err := s.Watch(WatchSpec{Key: []byte("a"), End: []byte{0}})
	if err != nil {
		t.Fatal(err)
	}
	cause := corruptf(dir, "test damage")
	aside, err := s.Reset(cause)
	if err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if !strings.HasPrefix(filepath.Base(aside), "kv.corrupt-") {
		t.Fatalf("set aside to %s", aside)
	}
	if len(filesOf(t, aside, ".sst")) == 0 {
		t.Fatalf("%s holds no table", aside)
	}
	if !errors.Is(w.Err(), ErrCorrupt) {
		t.Fatalf("watcher after Reset: %v", w.Err())
	}
	if s.AppliedIndex() != 0 {
		t.Fatalf("applied after Reset: %d", s.AppliedIndex())
	}
	whole := bytes.Clone(copy.Bytes())
	halfCopy := func() io.Reader {
		return io.MultiReader(bytes.NewReader(whole[:len(whole)/2]), iotest.ErrReader(errors.New("connection lost")))
	}
	// A restore cut short leaves the store marked damaged until one
	// finishes...
	if err := s.Restore(halfCopy()); err == nil {
		t.Fatal("a restore from half a copy succeeded")
	}
	if err := s.Restore(bytes.NewReader(whole)); err != nil {
		t.Fatal(err)
	}
	checkAllKeys(t, s)
	kvClose(t, s)
	s = kvOpen(t, dir)
	checkAllKeys(t, s)
	// ...and a store left so is not opened again.
	if err := s.Restore(halfCopy()); err == nil {
		t.Fatal("a restore from half a copy succeeded")
	}
	kvClose(t, s)
	_, err = OpenKV(dir, kvTestLogger(t), Options{})
	wantCorrupt(t, err, damageMarkerFile)
}

// A torn write, the last entry of a log cut short by a kill, is no damage:
// the store opens. The same log with a flipped entry before whole ones
// does not.
func TestKVOpenTellsTornWriteFromDamage(t *testing.T) {
	dir := t.TempDir()
	s := kvOpen(t, dir)
	for i := range 2000 {
		kvApply(t, s, uint64(i+1), func(b *Batch) {
			if _, _, err := b.Put(corruptKey(i), []byte("small"), 0, false); err != nil {
				t.Fatal(err)
			}
		})
	}
	killed := func() (string, string, []byte) {
		to := t.TempDir()
		if err := os.CopyFS(to, os.DirFS(dir)); err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(to, "LOCK"))
		os.Remove(filepath.Join(to, openingFile))
		mems := filesOf(t, to, ".mem")
		mem := mems[len(mems)-1]
		b, err := os.ReadFile(mem)
		if err != nil {
			t.Fatal(err)
		}
		return to, mem, bytes.TrimRight(b, "\x00")
	}

	torn, mem, data := killed()
	// Zero the second half of the last entry.
	b, _ := os.ReadFile(mem)
	for i := len(data) - 20; i < len(data); i++ {
		b[i] = 0
	}
	if err := os.WriteFile(mem, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenKV(torn, kvTestLogger(t), Options{})
	if err != nil {
		t.Fatalf("open after a torn write: %v", err)
	}
	s2.Close()

	damaged, mem, data := killed()
	flip(t, mem, len(data)/2, 64)
	_, err = OpenKV(damaged, kvTestLogger(t), Options{})
	wantCorrupt(t, err, filepath.Base(mem))
}
