package storage

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// The state store writes without fsync: the raft log is the durability
// point, and a store that lost its tail replays it from there. That holds
// when the process dies (the kernel still writes back what it was given),
// but not when the machine does: values live in Badger's value log and
// their pointers in its write-ahead log, two files the kernel writes back
// in no particular order, so after a power cut a pointer can outlive its
// value. The store cannot tell which writes survived, so after an unclean
// stop across a reboot it rolls back to its last checkpoint, which was
// synced, and raft replays its log from there (checkpoint.go). A store that
// never took a checkpoint starts empty, and the replica rebuilds it from
// the newest raft snapshot and the raft log.
//
// uncleanFile marks a store open (or not closed cleanly); it holds the boot
// id of the machine that opened it.
const uncleanFile = "UNCLEAN"

// bootID identifies the running kernel boot ("" when unknown, and then a
// reboot is never assumed). A variable so tests can reboot.
var bootID = func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(b))
}

// rebootedSinceUnclean tells whether the store in dir was left open by a
// boot other than this one.
func rebootedSinceUnclean(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, uncleanFile))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read unclean marker: %w", err)
	}
	now := bootID()
	return now != "" && string(b) != now, nil
}

// markUnclean records, durably, that the store in dir is open.
func markUnclean(dir string) error {
	path := filepath.Join(dir, uncleanFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("unclean marker: %w", err)
	}
	_, err = f.WriteString(bootID())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("unclean marker: %w", err)
	}
	return nil
}

// markClean removes the marker once everything is on disk.
func markClean(dir string) error {
	if err := os.Remove(filepath.Join(dir, uncleanFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unclean marker: %w", err)
	}
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("unclean marker: %w", err)
	}
	return nil
}

// WriteFileDurably replaces dir/name with data: a crash leaves the old
// content or the new, never a mix, and the new is on disk when it returns.
func WriteFileDurably(dir, name string, data []byte, perm os.FileMode) error {
	path := filepath.Join(dir, name)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = SyncDir(dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// SyncDir fsyncs directory dir, so that the files created, renamed or
// removed in it stay so after a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
