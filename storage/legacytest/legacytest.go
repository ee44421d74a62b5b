// Package legacytest holds a data dir written by a release of kvd that
// kept the raft log in Badger, for the tests of its migration.
package legacytest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	_ "embed"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// dataDir is the data dir of kvd at commit 068e1c0, killed with SIGKILL:
// node old1 at 127.0.0.1:17379, alone (cluster-id, node-id, kv/, raft/
// with its JOURNAL, no snapshot), holding k1..k39 = v1..v39, big1..big5
// each 3000 bytes of its digit (entries that went to the Badger log's
// value log), and k40 put then deleted: raft log indexes 1 to 49 in term
// 2, revision 49. Files were tarred with their holes punched.
//
//go:embed badger-raft-log.tar.gz
var dataDir []byte

// LastIndex is the last raft log index in the data dir.
const LastIndex = 49

// DataDir unpacks the data dir into a new temporary directory and returns
// its path. Runs of zeros become holes, as Badger's preallocated files are
// mostly empty.
func DataDir(t testing.TB) string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(root, filepath.FromSlash(h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(path, 0o700); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg, tar.TypeGNUSparse:
			if err := writeSparse(path, tr, h.Size); err != nil {
				t.Fatal(err)
			}
		}
	}
	return filepath.Join(root, "datadir")
}

func writeSparse(path string, r io.Reader, size int64) error {
	out, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	buf := make([]byte, 64<<10)
	zero := make([]byte, len(buf))
	var off int64
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, err := out.WriteAt(buf[:n], off); err != nil {
				return err
			}
		}
		off += int64(n)
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if err := out.Truncate(size); err != nil {
		return err
	}
	return out.Close()
}
