package badgerlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/storage"
	"github.com/kvstore/kvstore/storage/legacytest"
)

// readOld reads the old raft log in dir: its stable keys and its entries.
func readOld(t *testing.T, dir string) (map[string]string, []*raft.Log, error) {
	t.Helper()
	stable := map[string]string{}
	var logs []*raft.Log
	err := Read(dir, slog.New(slog.DiscardHandler),
		func(k, v []byte) error { stable[string(k)] = string(v); return nil },
		func(b []*raft.Log) error { logs = append(logs, b...); return nil })
	return stable, logs, err
}

// wantRun checks that logs are the indexes first to last, in order.
func wantRun(t *testing.T, logs []*raft.Log, first, last uint64) {
	t.Helper()
	if len(logs) == 0 || logs[0].Index != first || logs[len(logs)-1].Index != last || uint64(len(logs)) != last-first+1 {
		var got []uint64
		for _, l := range logs {
			got = append(got, l.Index)
		}
		t.Fatalf("entries %v, want %d to %d", got, first, last)
	}
	for i, l := range logs {
		if l.Index != first+uint64(i) {
			t.Fatalf("entry %d has index %d", i, l.Index)
		}
	}
}

// deleteOldEntries deletes entries from the Badger database under dir,
// as a power loss that Badger's files did not survive whole could.
func deleteOldEntries(t *testing.T, dir string, indexes ...uint64) {
	t.Helper()
	db, err := badger.Open(options(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(txn *badger.Txn) error {
		for _, i := range indexes {
			if err := txn.Delete(logKey(i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRead reads the raft log of a data dir that kvd wrote when
// it kept the log in Badger, and of copies of it damaged as a crash or a
// disk could.
func TestRead(t *testing.T) {
	raftDir := func(t *testing.T) string { return filepath.Join(legacytest.DataDir(t), "raft") }
	last := uint64(legacytest.LastIndex)

	t.Run("as written", func(t *testing.T) {
		stable, logs, err := readOld(t, raftDir(t))
		if err != nil {
			t.Fatal(err)
		}
		wantRun(t, logs, 1, last)
		if term := stable["CurrentTerm"]; len(term) != 8 || term[7] != 2 {
			t.Fatalf("CurrentTerm %q, want 2", term)
		}
		if logs[0].Type != raft.LogConfiguration {
			t.Fatalf("entry 1 is a %v, want the configuration", logs[0].Type)
		}
	})

	t.Run("Badger lost entries the journal holds", func(t *testing.T) {
		dir := raftDir(t)
		deleteOldEntries(t, dir, 30, 45, 46, 47, 48, 49)
		_, logs, err := readOld(t, dir)
		if err != nil {
			t.Fatal(err)
		}
		wantRun(t, logs, 1, last)
	})

	t.Run("entries past a gap nobody acknowledged", func(t *testing.T) {
		dir := raftDir(t)
		// The journal's first record, its checkpoint at index 0, alone:
		// a journal that no append reached.
		path := filepath.Join(dir, journalFile)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		c, err := readJournal(bytes.NewReader(b))
		if err != nil || c.checkpoint != 0 || len(c.entries) == 0 {
			t.Fatalf("journal: checkpoint %d, %d entries, %v", c.checkpoint, len(c.entries), err)
		}
		first := 8 + int(binary.LittleEndian.Uint32(b))
		if err := os.WriteFile(path, b[:first], 0o600); err != nil {
			t.Fatal(err)
		}
		deleteOldEntries(t, dir, 30)
		_, logs, err := readOld(t, dir)
		if err != nil {
			t.Fatal(err)
		}
		wantRun(t, logs, 1, 29)
	})

	t.Run("a damaged journal record before whole ones", func(t *testing.T) {
		dir := raftDir(t)
		path := filepath.Join(dir, journalFile)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xff
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err = readOld(t, dir)
		var ce *storage.CorruptError
		if !errors.As(err, &ce) || ce.Path != path {
			t.Fatalf("read with a damaged journal: %v, want a CorruptError naming %s", err, path)
		}
	})
}
