package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// ErrCorrupt matches every error that says stored data is damaged: bytes
// that do not decode, a checksum that does not match, a store that lost
// data it had made durable, or a panic inside the storage engine. A store
// that returns it must not be served from again (doc.go).
var ErrCorrupt = errors.New("corrupt data")

// CorruptError is damage found in one file, or in a directory when the
// file is not known.
type CorruptError struct {
	// Path is the damaged file or directory.
	Path string
	Err  error
}

func (e *CorruptError) Error() string { return fmt.Sprintf("%s: %v", e.Path, e.Err) }

// Unwrap returns the cause.
func (e *CorruptError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrCorrupt) hold.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// CorruptPath returns the file or directory a corruption error names, ""
// when err does not name one.
func CorruptPath(err error) string {
	var ce *CorruptError
	if errors.As(err, &ce) {
		return ce.Path
	}
	return ""
}

func corruptf(path, format string, args ...any) error {
	return &CorruptError{Path: path, Err: fmt.Errorf(format, args...)}
}

// badgerDamage lists what Badger says when it opens damaged files. Badger
// wraps errors with %+v, not %w, so only the text tells; errors that are
// not about the files' contents (a directory lock another process holds,
// permissions, a full disk) must not match, or a healthy store would be
// set aside.
var badgerDamage = []string{
	"checksum", "CHECKSUM", "corrupt", "Corrupt", "manifest", "Manifest", "MANIFEST",
	"bad magic", "magic number", "unexpected EOF", "decompress", "Invalid read",
	"does not exist for table", "Level validation", "cannot parse invalid wire-format",
	"proto:", "out of range", "Invalid filename", "Unable to parse log",
}

// badgerCorrupt returns err as a CorruptError when Badger's text says the
// files in dir are damaged, and err unchanged otherwise.
func badgerCorrupt(dir string, err error) error {
	if err == nil || errors.Is(err, ErrCorrupt) {
		return err
	}
	msg := err.Error()
	for _, s := range badgerDamage {
		if strings.Contains(msg, s) {
			return &CorruptError{Path: damagedFile(dir, msg), Err: err}
		}
	}
	return err
}

var (
	badgerPathRE = regexp.MustCompile(`[^\s"':,]+\.(sst|vlog|mem)\b`)
	badgerFidRE  = regexp.MustCompile(`Fid:(\d+)`)
)

// damagedFile finds the file a Badger message is about, or dir.
func damagedFile(dir, msg string) string {
	if m := badgerPathRE.FindString(msg); m != "" {
		if filepath.IsAbs(m) {
			return m
		}
		return filepath.Join(dir, filepath.Base(m))
	}
	if m := badgerFidRE.FindStringSubmatch(msg); m != nil {
		if fid, err := strconv.Atoi(m[1]); err == nil {
			return filepath.Join(dir, fmt.Sprintf("%06d.vlog", fid))
		}
	}
	for _, name := range []string{"MANIFEST", "KEYREGISTRY"} {
		if strings.Contains(strings.ToUpper(msg), name) {
			return filepath.Join(dir, name)
		}
	}
	return dir
}

// recoverPanic turns a panic of the storage engine on the caller's
// goroutine into a CorruptError naming dir, logged with its stack. Use as
// defer recoverPanic(dir, what, logger, &err). A panic in one of Badger's
// own goroutines cannot be recovered: the open marker (openmark.go) is
// what catches that one.
func recoverPanic(dir, what string, logger *slog.Logger, errp *error) {
	r := recover()
	if r == nil {
		return
	}
	if logger != nil {
		logger.Error("the storage engine panicked", "dir", dir, "during", what, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	}
	*errp = &CorruptError{Path: dir, Err: fmt.Errorf("%s: the storage engine panicked: %v", what, r)}
}

// asideSuffix names a directory set aside as corrupt: dir.corrupt-<time>.
const asideSuffix = ".corrupt-"

// SetAside renames dir, a store found corrupt, to dir.corrupt-<UTC time>
// beside it and returns the new path. The files stay for whoever wants to
// look at them; nothing reads them again.
func SetAside(dir string) (string, error) {
	dir = filepath.Clean(dir)
	base := dir + asideSuffix + time.Now().UTC().Format("20060102T150405Z")
	to := base
	for i := 2; ; i++ {
		_, err := os.Lstat(to)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("set aside %s: %w", dir, err)
		}
		to = base + "-" + strconv.Itoa(i)
	}
	if err := os.Rename(dir, to); err != nil {
		return "", fmt.Errorf("set aside %s: %w", dir, err)
	}
	if err := SyncDir(filepath.Dir(dir)); err != nil {
		return "", fmt.Errorf("set aside %s: %w", dir, err)
	}
	return to, nil
}
