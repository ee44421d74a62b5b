// Package badgerlog reads the raft log that kvd releases before
// storage/raftlog kept in Badger, once, to migrate it (node/migrate.go). It
// changes no entry and writes nothing of its own; errors about damaged
// files are storage.CorruptError.
package badgerlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	badgeroptions "github.com/dgraph-io/badger/v4/options"
	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/storage"
)

// The raft log of releases before storage/raftlog: a Badger database whose
// keys are 'l' + the index (uint64 big-endian) for an entry (decodeLog's format)
// and 's' + the key for a stable store value, with, on Linux, a JOURNAL
// file beside Badger's files holding every append since Badger's files
// were last synced. Read reads it once, to migrate it.

// MemTable is the memtable size the database is opened with: no smaller
// than any it was written with (8 MiB at most), or replaying a memtable log
// would overflow its arena. Opening writes tables of up to that size.
const MemTable = 16 << 20

// badgerLogBatch bounds the entries handed over at once.
const badgerLogBatch = 1024

// Read reads the raft log kept in Badger in dir by releases before
// storage/raftlog: it calls stable with every stable store key and
// value, then logs with the entries in index order, in batches, as the
// old store would have served them after a crash:
//   - the journal's entries are taken over Badger's (the same bytes when
//     both have them); Badger may have lost the journal's after a power
//     loss;
//   - entries past a gap that the journal does not cover were never
//     acknowledged (a crash left them past a lost write), and are left out;
//   - a gap that the journal says held acknowledged entries, a damaged
//     journal record followed by whole ones, or an entry that does not
//     decode fail with a CorruptError.
//
// It writes nothing to dir itself; Badger, as it opens and closes the
// database, cuts a memtable log that a crash left at its last whole record
// and flushes memtables to tables, as it did under the old store, which
// changes no entry.
func Read(dir string, logger *slog.Logger, stable func(key, val []byte) error, logs func([]*raft.Log) error) error {
	if logger == nil {
		logger = slog.Default()
	}
	jpath := filepath.Join(dir, journalFile)
	var jc journalContents
	switch b, err := os.ReadFile(jpath); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("old raft log: %w", err)
	default:
		if jc, err = readJournal(bytes.NewReader(b)); err != nil {
			return corruptf(jpath, "%v", err)
		}
		if at := jc.damagedAt(); at > 0 {
			return corruptf(jpath, "a damaged record at offset %d is followed by whole ones: entries after it would be lost", at)
		}
	}
	// end is the last index the journal says was acknowledged.
	end := jc.checkpoint
	journal := make(map[uint64][]byte, len(jc.entries))
	var jfirst uint64
	for _, e := range jc.entries {
		journal[e.index] = e.data
		end = max(end, e.index)
		if jfirst == 0 || e.index < jfirst {
			jfirst = e.index
		}
	}

	db, err := open(options(dir))
	if err != nil {
		return fmt.Errorf("old raft log: %w", err)
	}
	defer db.Close()

	err = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{stablePrefix}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			v, err := item.ValueCopy(nil)
			if err != nil {
				return corrupt(dir, fmt.Errorf("stable key %q: %w", item.Key()[1:], err))
			}
			if err := stable(item.KeyCopy(nil)[1:], v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("old raft log %s: %w", dir, err)
	}

	var batch []*raft.Log
	var next uint64 // the index the next entry must have; 0 before the first
	emit := func(index uint64, data []byte) error {
		l := new(raft.Log)
		if err := decodeLog(data, l); err != nil {
			return corruptf(dir, "entry %d: %v", index, err)
		}
		if l.Index != index {
			return corruptf(dir, "entry %d holds index %d", index, l.Index)
		}
		batch = append(batch, l)
		next = index + 1
		if len(batch) == badgerLogBatch {
			if err := logs(batch); err != nil {
				return err
			}
			batch = nil
		}
		return nil
	}
	// fill hands over the journal's entries from next up to before to,
	// and tells whether it held them all.
	fill := func(to uint64) (bool, error) {
		for next < to {
			data, ok := journal[next]
			if !ok {
				return false, nil
			}
			if err := emit(next, data); err != nil {
				return false, err
			}
		}
		return true, nil
	}
	gap := false
	err = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{logPrefix}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			k := item.Key()
			if len(k) != logKeyLen {
				return corruptf(dir, "a log key of %d bytes", len(k))
			}
			index := logKeyIndex(k)
			if next == 0 {
				next = index
			}
			if index != next {
				whole, err := fill(index)
				if err != nil {
					return err
				}
				if !whole {
					gap = true
					return nil
				}
			}
			data, ok := journal[index]
			if !ok {
				var err error
				if data, err = item.ValueCopy(nil); err != nil {
					return corrupt(dir, fmt.Errorf("entry %d: %w", index, err))
				}
			}
			if err := emit(index, data); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("old raft log %s: %w", dir, err)
	}
	if next == 0 {
		// Badger holds no entry: the journal's, from its first on.
		next = jfirst
	}
	if !gap && next != 0 {
		if _, err := fill(end + 1); err != nil {
			return fmt.Errorf("old raft log %s: %w", dir, err)
		}
	}
	if next != 0 && next <= end {
		return fmt.Errorf("old raft log %s: %w", dir, corruptf(dir, "the log stops at index %d, but %s says entries up to %d were stored", next-1, journalFile, end))
	}
	if gap {
		logger.Warn("old raft log: leaving out entries past a gap that a crash left; none was acknowledged", "dir", dir, "from", next)
	}
	if len(batch) > 0 {
		return logs(batch)
	}
	return nil
}

// Key layout and entry encoding of the old store.
const (
	logPrefix    byte = 'l'
	stablePrefix byte = 's'
	logKeyLen         = 1 + 8

	logCodecVersion byte = 1
	// flagHasAppendedAt in the flags byte: AppendedAt follows.
	flagHasAppendedAt byte = 1 << 0
	knownFlags             = flagHasAppendedAt
)

func logKey(index uint64) []byte {
	k := make([]byte, logKeyLen)
	k[0] = logPrefix
	binary.BigEndian.PutUint64(k[1:], index)
	return k
}

// logKeyIndex returns the index in a log key; the caller checks the length.
func logKeyIndex(k []byte) uint64 {
	return binary.BigEndian.Uint64(k[1:logKeyLen])
}

// errCorruptLog is wrapped by every decodeLog error.
var errCorruptLog = fmt.Errorf("%w: log entry", storage.ErrCorrupt)

// decodeLog decodes an entry of the old store into l:
//
//	version byte (1)
//	uvarint Index, uvarint Term, byte Type
//	uvarint len(Data), Data
//	uvarint len(Extensions), Extensions
//	flags byte; if flagHasAppendedAt: varint AppendedAt.UnixNano()
//
// It never panics:
// every length and varint is bounds-checked, and it returns an error
// wrapping errCorruptLog instead. Data and Extensions are copied, so l does
// not alias b (Badger's value buffers are only valid inside the
// transaction). l is written only on success.
func decodeLog(b []byte, l *raft.Log) error {
	d := logDecoder{buf: b}
	if v := d.byte("version"); d.err == nil && v != logCodecVersion {
		return fmt.Errorf("%w: unknown version %d", errCorruptLog, v)
	}
	var out raft.Log
	out.Index = d.uvarint("index")
	out.Term = d.uvarint("term")
	out.Type = raft.LogType(d.byte("type"))
	out.Data = d.bytes("data")
	out.Extensions = d.bytes("extensions")
	flags := d.byte("flags")
	if d.err == nil && flags&^knownFlags != 0 {
		return fmt.Errorf("%w: unknown flags %#x", errCorruptLog, flags)
	}
	if flags&flagHasAppendedAt != 0 {
		ns := d.varint("appended_at")
		if d.err == nil {
			out.AppendedAt = time.Unix(0, ns)
		}
	}
	if d.err != nil {
		return d.err
	}
	if len(d.buf) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", errCorruptLog, len(d.buf))
	}
	*l = out
	return nil
}

// logDecoder consumes b front to back; after the first error every read
// returns a zero value and err keeps the first error.
type logDecoder struct {
	buf []byte
	err error
}

func (d *logDecoder) fail(field, why string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s: %s", errCorruptLog, field, why)
	}
}

func (d *logDecoder) byte(field string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) < 1 {
		d.fail(field, "truncated")
		return 0
	}
	v := d.buf[0]
	d.buf = d.buf[1:]
	return v
}

func (d *logDecoder) uvarint(field string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.fail(field, "bad varint")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *logDecoder) varint(field string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.buf)
	if n <= 0 {
		d.fail(field, "bad varint")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

// bytes reads a length-prefixed byte string, returning nil for length 0.
func (d *logDecoder) bytes(field string) []byte {
	n := d.uvarint(field + " length")
	if d.err != nil || n == 0 {
		return nil
	}
	// Compare as uint64 so a huge corrupt length cannot overflow int.
	if n > uint64(len(d.buf)) {
		d.fail(field, fmt.Sprintf("length %d exceeds remaining %d bytes", n, len(d.buf)))
		return nil
	}
	v := make([]byte, n)
	copy(v, d.buf)
	d.buf = d.buf[n:]
	return v
}

// options are the Badger options the old store is opened with. Badger's
// own logging is dropped: a damaged file fails the open or the read.
func options(dir string) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(nil).
		WithMemTableSize(MemTable).
		WithNumMemtables(2).
		WithBlockCacheSize(0).
		WithCompression(badgeroptions.None).
		WithChecksumVerificationMode(badgeroptions.OnBlockRead).
		WithVerifyValueChecksum(true)
}

// open opens the database with opts; a panic of Badger's while it opens
// is a CorruptError.
func open(opts badger.Options) (db *badger.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, corruptf(opts.Dir, "opening: the storage engine panicked: %v", r)
		}
	}()
	return badger.Open(opts)
}

func corruptf(path, format string, args ...any) error {
	return &storage.CorruptError{Path: path, Err: fmt.Errorf(format, args...)}
}

// corrupt is err, reading path, as a CorruptError: Badger's errors about
// the files it reads are damage.
func corrupt(path string, err error) error {
	return &storage.CorruptError{Path: path, Err: err}
}
