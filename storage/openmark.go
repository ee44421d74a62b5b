package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// openingFile marks a store being opened: written (durably) before the
// storage engine opens its files and checks them, removed once that is
// over, whether it succeeded or failed with an error. Only a process that
// died part way through leaves it behind: most likely a panic in one of
// Badger's own goroutines on a damaged file, which nothing can recover.
// The next open finds the marker and reports the store corrupt instead of
// opening it, and dying, again: a node never crash-loops on a damaged
// file. A process killed while it opened leaves the marker too; it cannot
// be told from a crash, and the store is treated as corrupt all the same
// (in a cluster it is rebuilt; alone, the error says to remove the marker
// if the start was only killed).
const openingFile = "OPENING"

// beginOpen creates dir if needed and marks it being opened; it fails with
// a CorruptError if an earlier open never finished.
func beginOpen(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	path := filepath.Join(dir, openingFile)
	if _, err := os.Stat(path); err == nil {
		return corruptf(path, "the last start stopped while it opened and checked this store "+
			"(a crash inside the storage engine on a damaged file, or a kill): it is not trusted; "+
			"if that start was only killed, remove %s and start again", path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("open marker: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("open marker: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("open marker: %w", err)
	}
	return nil
}

// endOpen removes the marker of beginOpen.
func endOpen(dir string) error {
	if err := os.Remove(filepath.Join(dir, openingFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("open marker: %w", err)
	}
	if err := syncDir(dir); err != nil {
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
		err = syncDir(dir)
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
