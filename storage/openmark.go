package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// openingFile marks a store being opened: written (durably) before the
// storage engine opens its files and checks them, removed once that is
// over, whether it succeeded or failed with an error. It holds how many
// starts in a row died part way through: most likely a panic in one of
// Badger's own goroutines on a damaged file, which nothing can recover, or
// a kill. After openDeathsLimit of them the next open reports the store
// corrupt instead of opening it, and dying, again: a node never
// crash-loops on a damaged file, and one kill while it opened (a machine
// or a supervisor stopping it) costs nothing.
const openingFile = "OPENING"

// openDeathsLimit is how many starts in a row may die while opening a
// store before it is no longer trusted.
const openDeathsLimit = 2

// beginOpen creates dir if needed and marks it being opened; it fails with
// a CorruptError if openDeathsLimit earlier opens in a row never finished.
func beginOpen(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	path := filepath.Join(dir, openingFile)
	deaths := 0
	switch b, err := os.ReadFile(path); {
	case err == nil:
		// An empty or unreadable count is one death: the marker was
		// there.
		deaths = 1
		if n, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && n > 0 {
			deaths = n
		}
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("open marker: %w", err)
	}
	if deaths >= openDeathsLimit {
		return corruptf(path, "the last %d starts stopped while they opened and checked this store "+
			"(a crash inside the storage engine on a damaged file, or kills): it is not trusted; "+
			"if those starts were only killed, remove %s and start again", deaths, path)
	}
	if err := writeSynced(path, []byte(strconv.Itoa(deaths+1)+"\n")); err != nil {
		return fmt.Errorf("open marker: %w", err)
	}
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("open marker: %w", err)
	}
	return nil
}

// writeSynced replaces the content of the file at path and syncs it.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// endOpen removes the marker of beginOpen.
func endOpen(dir string) error {
	if err := os.Remove(filepath.Join(dir, openingFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("open marker: %w", err)
	}
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("open marker: %w", err)
	}
	return nil
}

// damageMarkerFile marks a store found damaged: every later open fails,
// until the store is set aside. Damage found while the store ran may read
// well until it is met again; damage found as it opened may be gone from
// view by the next open, because Badger opening a damaged file cuts it
// short (keepDamage).
const damageMarkerFile = "CORRUPT"

// markDamaged records, durably, that the store in dir is damaged.
func markDamaged(dir string, cause error) error {
	path := filepath.Join(dir, damageMarkerFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(cause.Error() + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = SyncDir(dir)
	}
	return err
}

// checkDamaged fails with the damage markDamaged recorded in dir, if any.
func checkDamaged(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, damageMarkerFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("damage marker: %w", err)
	}
	return corruptf(filepath.Join(dir, damageMarkerFile), "found damaged before: %s", strings.TrimSpace(string(b)))
}

// keepDamage marks dir damaged (markDamaged) when err is damage found
// once Badger had opened the files, and returns err.
func keepDamage(dir string, err error) error {
	if errors.Is(err, ErrCorrupt) {
		if merr := markDamaged(dir, err); merr != nil {
			return errors.Join(err, fmt.Errorf("mark the store damaged: %w", merr))
		}
	}
	return err
}
