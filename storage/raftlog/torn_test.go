package raftlog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tailRecords writes entries 1..n in batches of batch and returns the
// tail segment's path and the offsets of its records, with its end.
func tailRecords(t *testing.T, dir string, n, batch uint64) (string, []int64) {
	t.Helper()
	s, err := Open(dir, quietOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= n; i += batch {
		if err := s.StoreLogs(entries(i, min(i+batch-1, n), 1)); err != nil {
			t.Fatal(err)
		}
	}
	g := s.tail()
	offs := make([]int64, 0, len(g.offs)+1)
	for _, o := range g.offs {
		offs = append(offs, int64(o))
	}
	offs = append(offs, g.end)
	path := g.path
	s.Close()
	return path, offs
}

// TestTornTailEveryOffset cuts the last record at every byte offset, both
// as a crash leaves a preallocated file (the rest zeros) and as a shorter
// file, and checks that opening gives the log up to the last whole record
// and that appending and reopening then work.
func TestTornTailEveryOffset(t *testing.T) {
	for _, batch := range []uint64{1, 4} {
		dir := t.TempDir()
		const n = 12
		path, offs := tailRecords(t, dir, n, batch)
		saved := saveDir(t, dir)
		from, to := offs[len(offs)-2], offs[len(offs)-1]
		for _, shorten := range []bool{false, true} {
			for cut := from; cut < to; cut++ {
				t.Run(fmt.Sprintf("batch=%d/shorten=%v/cut=%d", batch, shorten, cut-from), func(t *testing.T) {
					restoreDir(t, dir, saved)
					orig := saved[filepath.Base(path)]
					b := append([]byte(nil), orig...)
					if shorten {
						b = b[:cut]
					} else {
						clear(b[cut:to])
					}
					if err := os.WriteFile(path, b, 0o600); err != nil {
						t.Fatal(err)
					}
					want := newModel()
					want.apply(op{kind: "store", logs: entries(1, n-1, 1)})
					if !shorten && bytes.Equal(b, orig) {
						// The record's last bytes were zeros: it is whole.
						want.apply(op{kind: "store", logs: entries(n, n, 1)})
					}
					s := openStore(t, dir, quietOptions(nil))
					checkExact(t, s, want)
					next := want.last + 1
					if err := s.StoreLogs(entries(next, next+1, 2)); err != nil {
						t.Fatalf("append after the cut: %v", err)
					}
					want.apply(op{kind: "store", logs: entries(next, next+1, 2)})
					s.Close()
					checkExact(t, openStore(t, dir, quietOptions(nil)), want)
				})
			}
		}
	}
}

// saveDir returns the contents of the files in dir.
func saveDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, e := range ents {
		if m[e.Name()], err = os.ReadFile(filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// restoreDir makes dir hold exactly the files saved.
func restoreDir(t *testing.T, dir string, saved map[string][]byte) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if _, ok := saved[e.Name()]; !ok {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	for name, b := range saved {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTornBatchOutOfOrder: the last batch reached the disk but for a
// sector in its middle; what follows the hole belongs to the same batch,
// so the log ends before the hole.
func TestTornBatchOutOfOrder(t *testing.T) {
	dir := t.TempDir()
	path, offs := tailRecords(t, dir, 12, 4) // tail holds batches of 4
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k := len(offs) - 1 - 4 // first record of the last batch
	clear(b[offs[k+1] : offs[k+2]-3])
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	want := newModel()
	want.apply(op{kind: "store", logs: entries(1, 9, 1)})
	checkExact(t, openStore(t, dir, quietOptions(nil)), want)
}

// corrupt flips a byte at off in the file at path.
func corrupt(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0x40
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func wantCorrupt(t *testing.T, dir, file string, off int64) {
	t.Helper()
	s, err := Open(dir, quietOptions(nil))
	if err == nil {
		s.Close()
		t.Fatal("Open of a corrupt log succeeded")
	}
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), file) ||
		(off >= 0 && !strings.Contains(err.Error(), fmt.Sprintf("offset %d", off))) {
		t.Fatalf("Open: %v; want corruption in %s at offset %d", err, file, off)
	}
}

// TestCorruptionInTheMiddle: a bad record followed by a later batch was
// synced before that batch was written: Open reports it, with the file
// and offset, rather than cutting the log there.
func TestCorruptionInTheMiddle(t *testing.T) {
	t.Run("tail", func(t *testing.T) {
		dir := t.TempDir()
		path, offs := tailRecords(t, dir, 12, 4)
		k := len(offs) - 1 - 8 // a record of the batch before the last
		corrupt(t, path, offs[k]+12)
		wantCorrupt(t, dir, path, offs[k])
	})
	t.Run("sealed segment", func(t *testing.T) {
		dir := t.TempDir()
		tailRecords(t, dir, 100, 5)
		segs := segFiles(t, dir)
		if len(segs) < 3 {
			t.Fatalf("%d segments", len(segs))
		}
		corrupt(t, segs[1], segHeaderLen+20)
		wantCorrupt(t, dir, segs[1], segHeaderLen)
	})
	t.Run("sealed segment, a zeroed sector", func(t *testing.T) {
		dir := t.TempDir()
		tailRecords(t, dir, 100, 5)
		segs := segFiles(t, dir)
		b, _ := os.ReadFile(segs[0])
		clear(b[segHeaderLen : segHeaderLen+100])
		os.WriteFile(segs[0], b, 0o600)
		wantCorrupt(t, dir, segs[0], segHeaderLen)
	})
	t.Run("segment header", func(t *testing.T) {
		dir := t.TempDir()
		tailRecords(t, dir, 100, 5)
		segs := segFiles(t, dir)
		corrupt(t, segs[1], 20)
		wantCorrupt(t, dir, segs[1], -1)
	})
	t.Run("missing segment", func(t *testing.T) {
		dir := t.TempDir()
		tailRecords(t, dir, 100, 5)
		segs := segFiles(t, dir)
		os.Remove(segs[1])
		wantCorrupt(t, dir, segs[2], -1)
	})
}

// TestCorruptRecordNotServed: a record that goes bad after Open is
// reported by GetLog, never returned.
func TestCorruptRecordNotServed(t *testing.T) {
	dir := t.TempDir()
	path, offs := tailRecords(t, dir, 12, 4)
	s := openStore(t, dir, quietOptions(nil))
	corrupt(t, path, offs[1]+10)
	first := 12 - uint64(len(offs)-2)
	var l = entry(0, 0)
	if err := s.GetLog(first+1, l); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Fatalf("GetLog of a corrupt record: %v", err)
	}
}

// TestLeftoverTmpRemoved: a segment whose creation a crash cut short is
// removed at open.
func TestLeftoverTmpRemoved(t *testing.T) {
	dir := t.TempDir()
	tailRecords(t, dir, 10, 5)
	tmp := filepath.Join(dir, segName(11)+".tmp")
	if err := os.WriteFile(tmp, []byte("half a header"), 0o600); err != nil {
		t.Fatal(err)
	}
	want := newModel()
	want.apply(op{kind: "store", logs: entries(1, 10, 1)})
	checkExact(t, openStore(t, dir, quietOptions(nil)), want)
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("%s is still there: %v", tmp, err)
	}
}
