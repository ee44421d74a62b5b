package storage

import (
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
			// block fails: the block it names is nil.
			err = corruptf(path, "a block does not decode or fails its checksum (%v)", r)
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

// vlogTail is where the data of the newest value log file ended before
// Badger opened it.
type vlogTail struct {
	path string
	end  int64
}

// maxTornEntry bounds what a torn write (a process killed while Badger
// copied an entry into the file) can leave past the last whole entry of a
// value log file: a few times the largest request.
const maxTornEntry = 8 << 20

// newestVlogEnd finds the newest value log file in dir and where its data
// ends: its size after a clean close, the end of what was written after a
// kill (Badger makes the file long and sparse, then fills it).
func newestVlogEnd(dir string) (vlogTail, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return vlogTail{}, err
	}
	var newest string
	for _, e := range ents {
		// Names are zero-padded numbers: the newest sorts last.
		if filepath.Ext(e.Name()) == ".vlog" && e.Name() > newest {
			newest = e.Name()
		}
	}
	if newest == "" {
		return vlogTail{}, nil
	}
	path := filepath.Join(dir, newest)
	f, err := os.Open(path)
	if err != nil {
		return vlogTail{}, err
	}
	defer f.Close()
	end, err := dataEnd(f)
	if err != nil {
		return vlogTail{}, fmt.Errorf("%s: %w", path, err)
	}
	return vlogTail{path: path, end: end}, nil
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

// check fails when Badger, opening the file, cut it by more than a torn
// write: it stops at the first damaged entry and drops everything after.
func (v vlogTail) check() error {
	if v.path == "" {
		return nil
	}
	fi, err := os.Stat(v.path)
	if err != nil {
		return fmt.Errorf("check %s: %w", v.path, err)
	}
	if cut := v.end - fi.Size(); cut > maxTornEntry {
		return corruptf(v.path, "the storage engine cut %d bytes off the end of this value log file at a damaged entry: the values in them are lost", cut)
	}
	return nil
}
