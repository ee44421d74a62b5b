// Package snapfile is the file format of a backup of the key-value state
// (kvctl snapshot save; kvd restore reads it).
//
// A file is
//
//	magic          "kvstore snapshot\n"
//	body           a copy of the state as storage.KV.Snapshot writes it
//	info           JSON (Info), describing the body
//	info length    4 bytes, big endian
//	end magic      "kvsnap1\n"
//	checksum       SHA-256 of every byte before it
//
// Invariants: a file that reads back whole (Verify) is exactly what its
// writer wrote, since the checksum covers every byte and the end of the
// file is found from its length; a truncated file misses its end magic or
// its checksum, and a changed byte changes the sum. Readers check the
// whole file before they use any of it. The description sits at the end
// because a writer learns the body's size and key count only once it has
// streamed it.
package snapfile

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"time"
)

const (
	magic    = "kvstore snapshot\n"
	endMagic = "kvsnap1\n"
	// tailLen is the fixed end: info length, end magic, checksum.
	tailLen = 4 + len(endMagic) + sha256.Size
	// maxInfoBytes bounds the description a reader accepts.
	maxInfoBytes = 1 << 20
)

// Format is the version of the body's encoding this package writes:
// storage.KV.Snapshot's run of length-prefixed Badger KVList messages.
const Format = 1

// Info describes a snapshot file.
type Info struct {
	// Format is the body's encoding (the Format constant).
	Format int `json:"format"`
	// Revision is the revision the copy is at; CompactedRevision the
	// oldest it can be read at.
	Revision          int64 `json:"revision"`
	CompactedRevision int64 `json:"compactedRevision"`
	// Keys counts the keys at Revision, Entries the stored records
	// (every version of every key, the revision index, leases).
	Keys    int64 `json:"keys"`
	Entries int64 `json:"entries"`
	// BodyBytes is the size of the copy.
	BodyBytes int64 `json:"bodyBytes"`
	// ClusterID and Member name where the copy was taken.
	ClusterID string    `json:"clusterId"`
	Member    string    `json:"member"`
	CreatedAt time.Time `json:"createdAt"`
}

// ErrInvalid marks a file that is not a whole snapshot file: truncated,
// changed, or something else.
var ErrInvalid = errors.New("not a whole kvstore snapshot file")

// Writer writes a snapshot file to an io.Writer: the body through Write,
// then the description and the checksum through Close.
type Writer struct {
	w    io.Writer
	hash hash.Hash
	body int64
	err  error
}

// NewWriter starts a file on w.
func NewWriter(w io.Writer) (*Writer, error) {
	sw := &Writer{w: w, hash: sha256.New()}
	if _, err := sw.write([]byte(magic)); err != nil {
		return nil, err
	}
	return sw, nil
}

func (w *Writer) write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.w.Write(p)
	w.hash.Write(p[:n])
	if err != nil {
		w.err = fmt.Errorf("write snapshot: %w", err)
	}
	return n, w.err
}

// Write appends p to the body.
func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.write(p)
	w.body += int64(n)
	return n, err
}

// Close writes the description, with BodyBytes and Format filled in, and
// the checksum, which it returns in hex.
func (w *Writer) Close(info Info) (string, error) { return w.CloseAligned(info, 0) }

// CloseAligned is Close, with the description padded (JSON allows trailing
// spaces) so that the bytes before the checksum are a multiple of align:
// an etcd snapshot is bbolt pages of 512 bytes and then their SHA-256,
// which is what etcdctl snapshot save checks for (the etcd API's
// Maintenance.Snapshot writes such files). 0 pads nothing.
func (w *Writer) CloseAligned(info Info, align int) (string, error) {
	info.Format = Format
	info.BodyBytes = w.body
	b, err := json.Marshal(info)
	if err != nil {
		return "", fmt.Errorf("write snapshot: %w", err)
	}
	if align > 0 {
		end := int64(len(magic)) + w.body + int64(len(b)) + 4 + int64(len(endMagic))
		if r := end % int64(align); r != 0 {
			b = append(b, bytes.Repeat([]byte{' '}, int(int64(align)-r))...)
		}
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(b)))
	b = append(b, endMagic...)
	if _, err := w.write(b); err != nil {
		return "", err
	}
	sum := w.hash.Sum(nil)
	if _, err := w.w.Write(sum); err != nil {
		return "", fmt.Errorf("write snapshot: %w", err)
	}
	return hex.EncodeToString(sum), nil
}

// Checked is a snapshot file read back whole.
type Checked struct {
	Info
	// SHA256 is the file's checksum in hex; Size its length.
	SHA256 string
	Size   int64
	path   string
}

// Verify reads the file at path whole and checks it: its magic, its end,
// its checksum and its description. A file that fails says why, wrapping
// ErrInvalid.
func Verify(path string) (*Checked, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open snapshot: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open snapshot: %w", err)
	}
	size := st.Size()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w: %s", path, ErrInvalid, fmt.Sprintf(format, args...))
	}
	if size < int64(len(magic)+tailLen) {
		return nil, bad("%d bytes, shorter than any snapshot file (truncated?)", size)
	}
	head := make([]byte, len(magic))
	if _, err := io.ReadFull(f, head); err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	if string(head) != magic {
		return nil, bad("it does not start as a kvstore snapshot file does")
	}
	tail := make([]byte, tailLen)
	if _, err := f.ReadAt(tail, size-int64(tailLen)); err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	if string(tail[4:4+len(endMagic)]) != endMagic {
		return nil, bad("its end is missing: the file is truncated (%d bytes)", size)
	}
	infoLen := int64(binary.BigEndian.Uint32(tail))
	bodyLen := size - int64(len(magic)) - infoLen - int64(tailLen)
	if infoLen > maxInfoBytes || bodyLen < 0 {
		return nil, bad("its end names a description of %d bytes, which the file cannot hold", infoLen)
	}
	// The checksum first: nothing else of a damaged file is to be trusted.
	h := sha256.New()
	h.Write(head)
	if _, err := f.Seek(int64(len(magic)), io.SeekStart); err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	if _, err := io.CopyN(h, f, size-int64(len(magic))-sha256.Size); err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	sum := h.Sum(nil)
	if want := tail[tailLen-sha256.Size:]; !bytes.Equal(sum, want) {
		return nil, bad("its checksum does not match (SHA-256 %x, the file says %x): it is damaged or truncated", sum, want)
	}
	raw := make([]byte, infoLen)
	if _, err := f.ReadAt(raw, int64(len(magic))+bodyLen); err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	var info Info
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&info); err != nil {
		return nil, bad("its description does not decode: %v", err)
	}
	if info.Format != Format {
		return nil, fmt.Errorf("%s: snapshot format %d; this version reads format %d", path, info.Format, Format)
	}
	if info.BodyBytes != bodyLen {
		return nil, bad("its description gives %d bytes of data, the file holds %d", info.BodyBytes, bodyLen)
	}
	return &Checked{Info: info, SHA256: hex.EncodeToString(sum), Size: size, path: path}, nil
}

// Open opens the body of a checked file for reading. The reader checks
// the file's checksum again as it goes, and fails at its end, rather than
// return io.EOF, if the file changed since Verify.
func (c *Checked) Open() (io.ReadCloser, error) {
	f, err := os.Open(c.path)
	if err != nil {
		return nil, fmt.Errorf("open snapshot: %w", err)
	}
	h := sha256.New()
	h.Write([]byte(magic))
	if _, err := f.Seek(int64(len(magic)), io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("open snapshot: %w", err)
	}
	return &bodyReader{f: f, body: io.LimitReader(f, c.BodyBytes), hash: h, c: c}, nil
}

type bodyReader struct {
	f    *os.File
	body io.Reader
	hash hash.Hash
	c    *Checked
	err  error
}

func (r *bodyReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.body.Read(p)
	r.hash.Write(p[:n])
	if err == io.EOF {
		err = r.finish()
	}
	if err != nil {
		r.err = err
	}
	return n, err
}

// finish hashes the rest of the file and compares the sum.
func (r *bodyReader) finish() error {
	if _, err := io.CopyN(r.hash, r.f, r.c.Size-int64(len(magic))-r.c.BodyBytes-sha256.Size); err != nil {
		return fmt.Errorf("read snapshot %s: %w", r.c.path, err)
	}
	if got := hex.EncodeToString(r.hash.Sum(nil)); got != r.c.SHA256 {
		return fmt.Errorf("%s: %w: the file changed while it was read (SHA-256 %s, was %s)", r.c.path, ErrInvalid, got, r.c.SHA256)
	}
	return io.EOF
}

func (r *bodyReader) Close() error { return r.f.Close() }

// Save writes a snapshot file at path crash-safely: into a temporary file
// beside it, synced, then renamed over path and the directory synced. fill
// writes the body to w and returns the description; on any error the
// temporary file is removed and path is untouched. It returns the
// checksum in hex.
func Save(path string, fill func(w io.Writer) (Info, error)) (sum string, err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".part-*")
	if err != nil {
		return "", fmt.Errorf("save snapshot: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	w, err := NewWriter(f)
	if err != nil {
		return "", err
	}
	info, err := fill(w)
	if err != nil {
		return "", err
	}
	if sum, err = w.Close(info); err != nil {
		return "", err
	}
	if err = f.Sync(); err != nil {
		return "", fmt.Errorf("save snapshot: sync: %w", err)
	}
	if err = f.Close(); err != nil {
		return "", fmt.Errorf("save snapshot: %w", err)
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return "", fmt.Errorf("save snapshot: %w", err)
	}
	if d, derr := os.Open(dir); derr == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return "", fmt.Errorf("save snapshot: sync %s: %w", dir, err)
		}
	}
	return sum, nil
}
