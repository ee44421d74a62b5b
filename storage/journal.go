package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/kvstore/kvstore/storage/diskspace"
)

// Why the raft log keeps a journal.
//
// Badger writes its memtable's write-ahead log through a memory map, so
// making an append durable means flushing mapped pages: the kernel
// write-protects them again after every sync and the next append to the
// same page faults. Measured on these 2-core machines, a synced append of
// 4,000 bytes cost 278-332 us of CPU and 563-651 us of wall time that way,
// against 151 us and 373 us for write(2) and fdatasync of a plain file. On
// a follower that sync is on the path of every write a client waits for.
//
// So on Linux (ownSync) the raft log leaves Badger's files unsynced and
// appends each StoreLogs's entries, already encoded, to a journal file
// beside them: write, then fdatasync. Badger still holds the log and
// serves every read; the journal only makes its recent writes durable:
//   - at open after the machine rebooted (its boot id changed since the
//     journal's checkpoint), every entry in the journal is written to
//     Badger again (the same bytes at the same index: writing one Badger
//     already has changes nothing); without a reboot the page cache kept
//     all Badger was given, so that is skipped. Then Badger's files are
//     synced and the journal starts over;
//   - past journalMaxBytes a checkpoint syncs Badger's files and starts
//     the journal over, so it stays small;
//   - a DeleteRange that removes a suffix (a follower dropping entries that
//     conflict with its leader's) checkpoints too, under the write lock: a
//     journal that still held the dropped entries would bring them back at
//     the next open, after the entries that replaced them.
//
// Prefix deletes (log compaction after a snapshot) need no checkpoint:
// replay skips entries below the first index, and a run it brings back
// anyway (the delete itself lost with the power) joins the log, which raft
// tolerates and the next compaction drops.
//
// After a power loss Badger's files may miss any part of what was written
// to them since the last checkpoint (only checkpoints sync its memtable
// files), and Badger's replay of each file stops at its first damaged
// record. Every entry a caller was told was stored is in the journal and
// comes back at open. Entries past the journal's end were never
// acknowledged: if a gap comes before some of them, open drops them from
// the gap on, so raft never sees a hole in its log. Entries large enough
// for Badger's value log (1 KiB and more) have only a pointer in the
// memtable: the value log is synced before the journal, as before.
//
// The file is written in place and never shortened, so that once it has
// grown a sync flushes data only, not the file's size: a checkpoint writes
// a new checkpoint record, with the next generation number, over the
// start. Record format: 4 bytes length of the payload, 4 bytes CRC-32C of
// it, then the payload: a kind byte, the generation (uvarint) and the
// kind's fields. The first record is a checkpoint; the journal ends at the
// first record after it that is cut short, fails its checksum or carries
// another generation (older bytes from before the last checkpoint).
const (
	journalFile = "JOURNAL"
	// journalHeaderLen is the length and checksum before each payload.
	journalHeaderLen = 8
	// journalMaxRecord bounds one record's payload when reading: larger
	// is corruption, not a record (raft appends are far smaller).
	journalMaxRecord = 1 << 30

	// recLogs holds entries: a uvarint count, then for each a uvarint
	// index, a uvarint length and the entry as encodeLog wrote it.
	recLogs byte = 1
	// recCheckpoint starts the journal: a uvarint, the log's last index
	// when Badger's files were synced, from which the journal goes on,
	// then the boot id of the machine then (uvarint length and bytes).
	recCheckpoint byte = 2
)

// journalMaxBytes is the journal size past which a sync checkpoints. It
// bounds what a restart writes back into Badger (about 50,000 puts of
// 256 bytes) against how often a checkpoint holds syncs up (5-16 ms each,
// measured under puts; every 8 s or so at 5,000 puts a second). A variable
// so tests can shrink it.
var journalMaxBytes int64 = 16 << 20

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// journal is the raft log's journal file (see above).
type journal struct {
	// mu guards pending: the fields of logs records (framed, with the
	// generation, by flush) for writes Badger has that are not in the file
	// yet.
	mu      sync.Mutex
	pending [][]byte

	// f, gen and size are used only by syncs, which the store
	// serialises: the file, its generation, and where the next record
	// goes.
	f    *os.File
	gen  uint64
	size int64
	// max is the size past which a sync checkpoints (journalMaxBytes by
	// default).
	max int64
}

// journalEntry is one raft log entry as the journal holds it.
type journalEntry struct {
	index uint64
	data  []byte // encodeLog's bytes
}

// journalContents is what a journal file holds.
type journalContents struct {
	gen        uint64
	checkpoint uint64
	boot       string // the boot id at the checkpoint, "" if unknown
	entries    []journalEntry
	// end is where the journal ended, rest the bytes of the file after
	// it: older generations, zeros, or damage (damagedAt).
	end  int64
	rest []byte
}

// damagedAt returns where a damaged record ended the journal although
// whole records of its generation follow, or 0: a torn write only ever
// ends the newest record. Only a replay after a reboot needs to know; it
// reads the rest of the file byte by byte.
func (c *journalContents) damagedAt() int64 {
	if c.end > 0 && wholeRecordOf(c.rest, c.gen) {
		return c.end
	}
	return 0
}

// openJournal opens (creating) the journal in dir and reads what it
// holds. The blocks of the file up to max and a record beyond are
// reserved, so that writing it never needs space the disk may lack: a
// failed sync stops every later append (deferredsync.go).
func openJournal(dir string, max int64) (*journal, journalContents, error) {
	path := filepath.Join(dir, journalFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, journalContents{}, fmt.Errorf("journal: %w", err)
	}
	c, err := readJournal(f)
	if err != nil {
		f.Close()
		return nil, journalContents{}, fmt.Errorf("journal %s: %w", path, err)
	}
	// A journal set larger than the default (tests do) reserves no more.
	n := min(max, DefaultSizing.Journal) + journalSlack
	if err := diskspace.Reserve(f, n); err != nil && !errors.Is(err, errors.ErrUnsupported) {
		f.Close()
		return nil, journalContents{}, fmt.Errorf("journal %s: reserve %d bytes: %w", path, n, err)
	}
	return &journal{f: f, gen: c.gen, max: max}, c, nil
}

// journalSlack is how far past max a journal is reserved: the records of
// the sync that crosses max.
const journalSlack = 1 << 20

// readJournal reads records from r until its end or the first record that
// is cut short, fails its checksum or is of another generation. A journal
// that does not start with a checkpoint record reads as empty.
func readJournal(r io.Reader) (c journalContents, err error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return c, err
	}
	all := data
	defer func() {
		if c.gen > 0 && len(data) > 0 {
			c.end, c.rest = int64(len(all)-len(data)), data[1:]
		}
	}()
	for first := true; len(data) >= journalHeaderLen; first = false {
		n := binary.LittleEndian.Uint32(data)
		sum := binary.LittleEndian.Uint32(data[4:])
		if n == 0 || n > journalMaxRecord || int64(n) > int64(len(data)-journalHeaderLen) ||
			crc32.Checksum(data[journalHeaderLen:journalHeaderLen+int(n)], crc32c) != sum {
			break
		}
		payload := data[journalHeaderLen : journalHeaderLen+int(n)]
		data = data[journalHeaderLen+int(n):]
		if more, err := c.add(payload, first); err != nil {
			// The checksum matched, so this is no torn write: a journal
			// this build cannot read. Replaying part of it could lose
			// acknowledged entries silently.
			return c, err
		} else if !more {
			break
		}
	}
	return c, nil
}

// wholeRecordOf tells whether a whole record of generation gen starts
// anywhere in b.
func wholeRecordOf(b []byte, gen uint64) bool {
	for i := 0; i+journalHeaderLen < len(b); i++ {
		n := int(binary.LittleEndian.Uint32(b[i:]))
		end := i + journalHeaderLen + n
		if n < 2 || end > len(b) {
			continue
		}
		p := b[i+journalHeaderLen : end]
		if g, k := binary.Uvarint(p[1:]); k > 0 && g == gen && crc32.Checksum(p, crc32c) == binary.LittleEndian.Uint32(b[i+4:]) {
			return true
		}
	}
	return false
}

// add folds in one record's payload; false when the journal ends before
// it (another generation, or no checkpoint first).
func (c *journalContents) add(p []byte, first bool) (bool, error) {
	kind, p := p[0], p[1:]
	uv := func(what string) (uint64, error) {
		v, n := binary.Uvarint(p)
		if n <= 0 {
			return 0, fmt.Errorf("record: bad %s", what)
		}
		p = p[n:]
		return v, nil
	}
	// lenBytes reads a uvarint length and that many bytes.
	lenBytes := func(what string) ([]byte, error) {
		n, err := uv(what + " length")
		if err != nil {
			return nil, err
		}
		if n > uint64(len(p)) {
			return nil, fmt.Errorf("record: %s runs past the record", what)
		}
		b := p[:n:n]
		p = p[n:]
		return b, nil
	}
	gen, err := uv("generation")
	if err != nil {
		return false, err
	}
	if first != (kind == recCheckpoint) || (!first && gen != c.gen) {
		return false, nil
	}
	switch kind {
	case recCheckpoint:
		last, err := uv("checkpoint")
		if err != nil {
			return false, err
		}
		boot, err := lenBytes("boot id")
		if err != nil {
			return false, err
		}
		c.gen, c.checkpoint, c.boot = gen, last, string(boot)
	case recLogs:
		count, err := uv("count")
		if err != nil {
			return false, err
		}
		for range count {
			index, err := uv("index")
			if err != nil {
				return false, err
			}
			data, err := lenBytes("entry")
			if err != nil {
				return false, err
			}
			c.entries = append(c.entries, journalEntry{index: index, data: data})
		}
	default:
		return false, fmt.Errorf("record of unknown kind %d", kind)
	}
	if len(p) != 0 {
		return false, errors.New("record: bytes after its fields")
	}
	return true, nil
}

// appendRecord appends to b a record of kind with generation gen and
// fields.
func appendRecord(b []byte, kind byte, gen uint64, fields []byte) []byte {
	p := binary.AppendUvarint([]byte{kind}, gen)
	p = append(p, fields...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(p, crc32c))
	return append(b, p...)
}

// add queues a record of entries that Badger now holds, for the next flush.
func (j *journal) add(entries []journalEntry) {
	if len(entries) == 0 {
		return
	}
	size := binary.MaxVarintLen64
	for _, e := range entries {
		size += 2*binary.MaxVarintLen64 + len(e.data)
	}
	f := make([]byte, 0, size)
	f = binary.AppendUvarint(f, uint64(len(entries)))
	for _, e := range entries {
		f = binary.AppendUvarint(f, e.index)
		f = binary.AppendUvarint(f, uint64(len(e.data)))
		f = append(f, e.data...)
	}
	j.mu.Lock()
	j.pending = append(j.pending, f)
	j.mu.Unlock()
}

// flush writes the queued records and syncs the file. The caller
// serialises flushes and resets.
func (j *journal) flush() error {
	j.mu.Lock()
	recs := j.pending
	j.pending = nil
	j.mu.Unlock()
	if len(recs) > 0 {
		var b []byte
		for _, f := range recs {
			b = appendRecord(b, recLogs, j.gen, f)
		}
		if _, err := j.f.WriteAt(b, j.size); err != nil {
			return fmt.Errorf("journal: write: %w", err)
		}
		j.size += int64(len(b))
	}
	if err := syncFile(j.f); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

// reset starts the journal over from a checkpoint: every write before it,
// up to log index last, is in Badger's synced files. With dropPending the
// queued records go too: the caller knows Badger's synced files hold them
// and that they must not come back (a suffix delete). The caller
// serialises flushes and resets.
//
// The checkpoint record of the next generation goes over the start of the
// file: what follows it is of an older generation and ends the journal. A
// crash that tears the record leaves a journal without a checkpoint, which
// open reads as empty (and then checks the whole log for gaps).
func (j *journal) reset(last uint64, dropPending bool) error {
	if dropPending {
		j.mu.Lock()
		j.pending = nil
		j.mu.Unlock()
	}
	boot := bootID()
	fields := binary.AppendUvarint(nil, last)
	fields = binary.AppendUvarint(fields, uint64(len(boot)))
	fields = append(fields, boot...)
	rec := appendRecord(nil, recCheckpoint, j.gen+1, fields)
	if _, err := j.f.WriteAt(rec, 0); err != nil {
		return fmt.Errorf("journal: reset: %w", err)
	}
	j.gen++
	j.size = int64(len(rec))
	if err := syncFile(j.f); err != nil {
		return fmt.Errorf("journal: reset: %w", err)
	}
	return nil
}

// close closes the file.
func (j *journal) close() error {
	if j == nil {
		return nil
	}
	return j.f.Close()
}
