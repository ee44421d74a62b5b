package badgerlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// The old raft log's journal (JOURNAL, beside Badger's files), read once
// to migrate the log: the old store appended each StoreLogs's entries to
// it, with one fdatasync, and synced Badger's files only at checkpoints,
// after which the journal started over. So after a power loss it holds
// every acknowledged entry since the last checkpoint, which Badger's files
// may have lost.
//
// Record format: 4 bytes length of the payload, 4 bytes CRC-32C of it,
// then the payload: a kind byte, the generation (uvarint) and the kind's
// fields. The first record is a checkpoint; the journal ends at the first
// record after it that is cut short, fails its checksum or carries another
// generation (older bytes from before the last checkpoint).
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

var crc32c = crc32.MakeTable(crc32.Castagnoli)

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
