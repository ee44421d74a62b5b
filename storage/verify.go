package storage

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2/z"
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// Checking a Badger database before it opens.
//
// Badger's own check of its tables at open (ChecksumVerificationMode
// OnTableRead) is not usable: on the first block that fails, it formats
// its error with a nil block and panics in one of its own goroutines, so
// the process dies on every start. And what it does not check it repairs
// without a word: the newest value log file and the memtable logs are cut
// at the first damaged entry (losing every value after it), and tables the
// manifest no longer names are deleted. So before Badger opens a
// directory, verifyFiles reads its manifest with Badger's own reader and
// every table the manifest names, every block, on this goroutine, where a
// panic is recovered and the damaged file named. Badger then opens with
// OnBlockRead, checking each block it reads later; value log entries are
// checked when read (VerifyValueChecksum).

// verifyFiles checks the manifest and the tables of the Badger database in
// dir, opened with opts; a damaged one gives a CorruptError naming it. A
// directory with no database yet passes.
func verifyFiles(dir string, opts badger.Options, logger *slog.Logger) (err error) {
	defer recoverPanic(dir, "checking the files", logger, &err)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("check %s: %w", dir, err)
	}
	var data []string // files that only an opened database leaves
	for _, e := range ents {
		if ext := filepath.Ext(e.Name()); ext == ".sst" || ext == ".vlog" {
			data = append(data, e.Name())
		}
	}
	manifestPath := filepath.Join(dir, "MANIFEST")
	fp, err := os.Open(manifestPath)
	if errors.Is(err, fs.ErrNotExist) {
		if len(data) > 0 {
			// Badger would start a new manifest and delete every table.
			return corruptf(manifestPath, "missing, while %s holds %s", dir, strings.Join(data, ", "))
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", manifestPath, err)
	}
	mf, end, err := badger.ReplayManifestFile(fp, opts.ExternalMagicVersion, opts)
	fp.Close()
	if err != nil {
		return &CorruptError{Path: manifestPath, Err: err}
	}
	if err := checkManifestTail(manifestPath, end); err != nil {
		return err
	}
	ids := make([]uint64, 0, len(mf.Tables))
	for id := range mf.Tables {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	// Reading tables is CPU (decompression, checksums): one worker per
	// core, the first damaged table in id order reported.
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(runtime.GOMAXPROCS(0), max(len(ids), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				errs[i] = verifyTable(table.NewFilename(ids[i], dir), mf.Tables[ids[i]].Compression, opts.BlockSize)
			}
		}()
	}
	for i := range ids {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// checkManifestTail tells a manifest Badger would cut at end because its
// last record was torn (a crash while appending: harmless) from one cut
// because a record in the middle is damaged: then whole records follow,
// and cutting them would lose the tables they add, which Badger then
// deletes as unknown.
func checkManifestTail(path string, end int64) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if end >= int64(len(b)) {
		return nil
	}
	// Records are 4 bytes length and 4 bytes CRC-32C (big endian), then
	// the change set. Any whole record after the cut means damage.
	tail := b[end:]
	const maxScan = 1 << 20
	for i := 1; i+8 <= len(tail) && i < maxScan; i++ {
		n := int(binary.BigEndian.Uint32(tail[i:]))
		if n == 0 || i+8+n > len(tail) {
			continue
		}
		if crc32.Checksum(tail[i+8:i+8+n], crc32c) == binary.BigEndian.Uint32(tail[i+4:]) {
			return corruptf(path, "a damaged record at offset %d is followed by whole ones (offset %d)", end, end+int64(i))
		}
	}
	return nil
}

// verifyTable reads every block of one table and checks its checksum.
func verifyTable(path string, compression options.CompressionType, blockSize int) (err error) {
	defer func() {
		if r := recover(); r != nil {
			// Table.VerifyChecksum panics formatting its own error when a
			// block fails: the block it names is nil. Other panics here
			// are damage too (offsets past the end of the file).
			err = corruptf(path, "a block fails its checksum or does not decode")
		}
	}()
	mf, err := z.OpenMmapFile(path, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return corruptf(path, "missing, though the manifest names it")
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	t, err := table.OpenTable(mf, table.Options{
		ChkMode:     options.NoVerification,
		Compression: compression,
		BlockSize:   blockSize,
	})
	if err != nil {
		mf.Close(-1)
		return &CorruptError{Path: path, Err: err}
	}
	defer t.MmapFile.Close(-1)
	if err := t.VerifyChecksum(); err != nil {
		return &CorruptError{Path: path, Err: err}
	}
	return nil
}

// Badger cuts its logs (every memtable log, the newest value log file) at
// the first entry that fails its checksum as it opens them, without a
// word, and what was after it is lost: applied entries, values. A torn
// write (the process killed while Badger copied an entry into the file)
// ends a log the same way, harmlessly. checkLogs tells the two apart
// before Badger opens the files: past a torn write there are only the
// rest of that one entry and zeros (Badger makes its logs long and sparse
// and fills them from the start); past damage there are whole entries, or
// more data than any entry holds.

// maxTorn bounds what a torn write leaves past the last whole entry: a
// few times the largest request.
const maxTorn = 8 << 20

// badgerLogHeader is the size of the header of Badger's log files
// (vlogHeaderSize: a key id and an IV).
const badgerLogHeader = 20

// checkLogs checks the memtable logs and the newest value log file in dir.
// After the machine went down the check is skipped: what was not synced
// may be gone or garbage, and is rolled back or replayed.
func checkLogs(dir string, rebooted bool) error {
	if rebooted {
		return nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var logs []string
	newestVlog := ""
	for _, e := range ents {
		switch filepath.Ext(e.Name()) {
		case ".vlog":
			// Names are zero-padded numbers: the newest sorts last.
			newestVlog = max(newestVlog, e.Name())
		case ".mem":
			logs = append(logs, e.Name())
		}
	}
	if newestVlog != "" {
		logs = append(logs, newestVlog)
	}
	for _, name := range logs {
		path := filepath.Join(dir, name)
		if err := checkLog(path); err != nil {
			return err
		}
	}
	return nil
}

// checkLog checks one log file (checkLogs).
func checkLog(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	defer f.Close()
	valid, end, err := logExtent(f)
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if end-valid > maxTorn {
		return corruptf(path, "the entry at offset %d fails its checksum and %d bytes follow it: the storage engine would drop them", valid, end-valid)
	}
	rest := make([]byte, end-valid)
	if _, err := f.ReadAt(rest, valid); err != nil && err != io.EOF {
		return fmt.Errorf("check %s: %w", path, err)
	}
	for i := 1; i < len(rest); i++ {
		if _, ok := entryAt(rest[i:]); ok {
			return corruptf(path, "the entry at offset %d fails its checksum, and whole entries follow it (offset %d): the storage engine would drop them", valid, valid+int64(i))
		}
	}
	return nil
}

// entryAt tells whether b starts with a whole entry, and its length.
func entryAt(b []byte) (int, bool) {
	if len(b) < 7 {
		return 0, false
	}
	i := 2 // meta and user meta
	klen, k := binary.Uvarint(b[i:])
	if k <= 0 || klen == 0 || klen > 1<<16 {
		return 0, false
	}
	i += k
	vlen, k := binary.Uvarint(b[i:])
	if k <= 0 || vlen > uint64(len(b)) {
		return 0, false
	}
	i += k
	if _, k = binary.Uvarint(b[i:]); k <= 0 { // expiry
		return 0, false
	}
	i += k
	body := i + int(klen) + int(vlen)
	if body+4 > len(b) || crc32.Checksum(b[:body], crc32c) != binary.BigEndian.Uint32(b[body:]) {
		return 0, false
	}
	return body + 4, true
}

// logExtent returns where the whole entries of a Badger log file end, and
// where its data ends. An entry is a header (meta and user meta bytes,
// uvarint key length, value length and expiry), the key, the value, and a
// big-endian CRC-32C of all that (Badger's safeRead.Entry).
func logExtent(f *os.File) (valid, end int64, err error) {
	if end, err = dataEnd(f); err != nil || end <= badgerLogHeader {
		return end, end, err
	}
	const maxHeader = 2 + 3*binary.MaxVarintLen64
	r := bufio.NewReaderSize(io.NewSectionReader(f, badgerLogHeader, end-badgerLogHeader), 1<<20)
	valid = badgerLogHeader
	for {
		h, _ := r.Peek(maxHeader)
		if len(h) < 7 {
			return valid, end, nil
		}
		i := 2 // meta and user meta
		klen, k := binary.Uvarint(h[i:])
		if k <= 0 || klen > 1<<16 {
			return valid, end, nil
		}
		i += k
		vlen, k := binary.Uvarint(h[i:])
		if k <= 0 || vlen > 1<<32 {
			return valid, end, nil
		}
		i += k
		if _, k = binary.Uvarint(h[i:]); k <= 0 { // expiry
			return valid, end, nil
		}
		i += k
		sum := crc32.Update(0, crc32c, h[:i])
		r.Discard(i)
		for left := int(klen + vlen); left > 0; {
			b, _ := r.Peek(min(left, r.Size()))
			if len(b) == 0 {
				return valid, end, nil
			}
			sum = crc32.Update(sum, crc32c, b)
			r.Discard(len(b))
			left -= len(b)
		}
		want, _ := r.Peek(4)
		if len(want) < 4 || binary.BigEndian.Uint32(want) != sum {
			return valid, end, nil
		}
		r.Discard(4)
		valid += int64(i) + int64(klen+vlen) + 4
	}
}

// dataEnd returns the offset past the last byte of f that is not zero.
// The first hole (where the file system reports one) bounds the search.
func dataEnd(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	end := min(firstHole(f), fi.Size())
	buf := make([]byte, 1<<20)
	for end > 0 {
		n := int64(len(buf))
		if n > end {
			n = end
		}
		if _, err := f.ReadAt(buf[:n], end-n); err != nil && err != io.EOF {
			return 0, err
		}
		chunk := buf[:n]
		trimmed := bytes.TrimRight(chunk, "\x00")
		if len(trimmed) > 0 {
			return end - n + int64(len(trimmed)), nil
		}
		end -= n
	}
	return 0, nil
}
