package snapfile

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func save(t *testing.T, body []byte) (string, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "snap.db")
	sum, err := Save(path, func(w io.Writer) (Info, error) {
		_, err := w.Write(body)
		return Info{Revision: 42, CompactedRevision: 7, Keys: 3, Entries: 9, ClusterID: "c", Member: "n1", CreatedAt: time.Unix(1, 0).UTC()}, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return path, sum
}

func TestRoundTrip(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789"), 10000)
	path, sum := save(t, body)
	c, err := Verify(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.SHA256 != sum || c.Revision != 42 || c.CompactedRevision != 7 || c.Keys != 3 || c.BodyBytes != int64(len(body)) || c.Member != "n1" {
		t.Fatalf("read back %+v, sum %s", c, sum)
	}
	rc, err := c.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("body: %d bytes, %v", len(got), err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*part*")); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestDamagedFilesAreRefused(t *testing.T) {
	body := bytes.Repeat([]byte("abcdefgh"), 4096)
	path, _ := save(t, body)
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cases := map[string][]byte{"empty": nil}
	for _, n := range []int{1, 17, 100, len(whole) / 2, len(whole) - 40, len(whole) - 1} {
		cases["truncated to "+itoa(n)] = whole[:n]
	}
	for _, off := range []int{0, 20, len(whole) / 2, len(whole) - 50, len(whole) - 30, len(whole) - 1} {
		b := bytes.Clone(whole)
		b[off] ^= 0x40
		cases["byte "+itoa(off)+" flipped"] = b
	}
	cases["appended to"] = append(bytes.Clone(whole), 'x')
	for name, b := range cases {
		p := filepath.Join(dir, "f")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Verify(p)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Verify = %v, want ErrInvalid", name, err)
		}
	}
}

func TestChangedAfterVerifyFailsTheRead(t *testing.T) {
	path, _ := save(t, bytes.Repeat([]byte("x"), 1000))
	c, err := Verify(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	b[100] = 'y'
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	rc, err := c.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadAll(rc); !errors.Is(err, ErrInvalid) {
		t.Fatalf("read of a changed file: %v, want ErrInvalid", err)
	}
}

func TestSaveLeavesNothingOnFailure(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snap.db")
	_, err := Save(path, func(w io.Writer) (Info, error) {
		w.Write([]byte("partial"))
		return Info{}, errors.New("stream broke")
	})
	if err == nil {
		t.Fatal("Save succeeded")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left %v", ents)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// An aligned file is what etcdctl snapshot save checks for: 512-byte
// pages and then their SHA-256; it still reads back whole.
func TestCloseAligned(t *testing.T) {
	for _, n := range []int{0, 1, 440, 511, 512, 5000} {
		var buf bytes.Buffer
		w, err := NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		body := bytes.Repeat([]byte("x"), n)
		if _, err := w.Write(body); err != nil {
			t.Fatal(err)
		}
		if _, err := w.CloseAligned(Info{Revision: 5, Keys: 1}, 512); err != nil {
			t.Fatal(err)
		}
		if got := buf.Len() % 512; got != 32 {
			t.Fatalf("body of %d: file of %d bytes, %d past a page", n, buf.Len(), got)
		}
		path := filepath.Join(t.TempDir(), "snap")
		if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Verify(path)
		if err != nil || c.BodyBytes != int64(n) || c.Revision != 5 {
			t.Fatalf("body of %d: %+v, %v", n, c, err)
		}
	}
}
