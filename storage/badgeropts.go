package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/pprof"
	"strings"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// badgerOptions returns Badger options for a small server: modest memory
// (Badger's defaults assume a large machine: 64 MiB memtables x5, a 256 MiB
// block cache, 1 GiB value log files), Badger's own logging routed to logger
// at warning level and above only, with component=badger and the directory
// as attributes. The sizes of memtables and value log files are the
// callers', from Sizing.
//
// It is shared by every Badger database in this package so they are tuned
// alike; callers layer their own settings (e.g. SyncWrites) on top.
//
// Note that MemTableSize (Sizing) also bounds the size of a single transaction
// (Badger allows 15% of it per transaction), so callers writing large
// batches must split them on badger.ErrTxnTooBig.
func badgerOptions(dir string, logger *slog.Logger) badger.Options {
	if logger == nil {
		logger = slog.Default()
	}
	return badger.DefaultOptions(dir).
		WithLogger(newBadgerLogger(logger.With("component", "badger", "dir", dir))).
		// At most 2 memtables in memory (one mutable, one being
		// flushed): each is a preallocated arena, so they are most of the
		// resident memory.
		WithNumMemtables(2).
		// Caches: compression is on (Snappy, Badger's default), which requires
		// a block cache; keep it and the index cache small (the state
		// database takes its sizes from Sizing).
		WithBlockCacheSize(DefaultSizing.BlockCache).
		WithIndexCacheSize(DefaultSizing.IndexCache).
		// Flush L0 early and stall writes before L0 grows large, so memory
		// and read amplification stay bounded on a small box.
		WithNumLevelZeroTables(3).
		WithNumLevelZeroTablesStall(8).
		// Two is the minimum Badger accepts (one is rejected; zero disables
		// compaction entirely).
		WithNumCompactors(2).
		// Damaged files are found, never served (verify.go): every block
		// read from a table and every value read from the value log is
		// checked against its checksum. The tables are checked whole
		// before Badger opens them (verifyFiles), not by Badger.
		WithChecksumVerificationMode(options.OnBlockRead).
		WithVerifyValueChecksum(true)
}

// openLabeled opens a Badger database with the goroutines it starts (its
// write pipeline, memtable flushes and compactions) labelled db=name in
// profiles: the label is how a CPU profile of a node tells what the
// state's database costs (go tool pprof -tags, or -tagfocus=db=state).
func openLabeled(name string, open func() (*badger.DB, error)) (db *badger.DB, err error) {
	pprof.Do(context.Background(), pprof.Labels("db", name), func(context.Context) {
		db, err = open()
	})
	return db, err
}

// badgerLogger adapts an slog.Logger to badger.Logger. Badger is chatty at
// INFO (every compaction, flush and replay is announced), so only warnings
// and errors are forwarded.
type badgerLogger struct {
	logger *slog.Logger
	// readFailed, when set, hears of every value Badger could not read:
	// Badger logs the error and hands the reader no value instead of
	// returning it (Item.yieldItemValue).
	readFailed func(msg string)
}

var _ badger.Logger = badgerLogger{}

func newBadgerLogger(logger *slog.Logger) badgerLogger {
	return badgerLogger{logger: logger}
}

// Errorf forwards Badger errors at slog error level.
func (l badgerLogger) Errorf(format string, args ...any) {
	if l.readFailed != nil && strings.HasPrefix(format, "Unable to read") {
		l.readFailed(fmt.Sprintf(format, args...))
	}
	l.log(slog.LevelError, format, args...)
}

// Warningf forwards Badger warnings at slog warn level.
func (l badgerLogger) Warningf(format string, args ...any) {
	l.log(slog.LevelWarn, format, args...)
}

// Infof drops the message: Badger's info output is routine housekeeping.
func (badgerLogger) Infof(string, ...any) {}

// Debugf drops the message.
func (badgerLogger) Debugf(string, ...any) {}

func (l badgerLogger) log(level slog.Level, format string, args ...any) {
	// Check Enabled first so a disabled level costs no Sprintf.
	if !l.logger.Enabled(context.Background(), level) {
		return
	}
	// Badger's format strings usually end in "\n", which would leave a
	// trailing newline inside the structured message.
	msg := strings.TrimRight(fmt.Sprintf(format, args...), "\n")
	l.logger.Log(context.Background(), level, msg)
}

// runValueLogGC rewrites value log files until none is at least half
// garbage. Values of 64 bytes and more live in the value log; smaller ones
// stay in the LSM tree, where compaction reclaims them. Only versions that
// compaction dropped (history below the compacted revision) are garbage.
func runValueLogGC(db *badger.DB, logger *slog.Logger) {
	for rewrites := 0; ; rewrites++ {
		err := db.RunValueLogGC(0.5)
		if err == nil {
			continue // a file was rewritten; another may qualify too
		}
		if errors.Is(err, badger.ErrNoRewrite) {
			logger.Debug("value log GC done", "rewrites", rewrites)
		} else {
			// E.g. ErrRejected when another GC is already running.
			logger.Warn("value log GC stopped", "rewrites", rewrites, "error", err)
		}
		return
	}
}
