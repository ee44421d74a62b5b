package raftlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path/filepath"
	"slices"
)

// The meta file holds raft's stable keys and the log's first index, in
// two fixed slots written in turn in place (doc.go says why).
const (
	metaName    = "meta"
	metaSlotLen = 4096
	metaVersion = 1
	// metaHeaderLen is a slot's checksum and payload length.
	metaHeaderLen = 8
)

// errMetaFull: the stable keys and values would not fit in a slot.
var errMetaFull = errors.New("stable store full")

// metaState is what one slot holds.
type metaState struct {
	seq uint64 // the slot with the higher seq is the current one
	// first: no log entry below it exists (0: none recorded).
	first uint64
	kv    map[string][]byte
}

// clone returns a copy of m whose map may be changed.
func (m metaState) clone() metaState {
	c := m
	c.kv = make(map[string][]byte, len(m.kv)+1)
	for k, v := range m.kv {
		c.kv[k] = v
	}
	return c
}

// encode returns m as a slot of metaSlotLen bytes.
func (m metaState) encode() ([]byte, error) {
	p := []byte{metaVersion}
	p = binary.LittleEndian.AppendUint64(p, m.seq)
	p = binary.LittleEndian.AppendUint64(p, m.first)
	p = binary.AppendUvarint(p, uint64(len(m.kv)))
	keys := make([]string, 0, len(m.kv))
	for k := range m.kv {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		p = binary.AppendUvarint(p, uint64(len(k)))
		p = append(p, k...)
		p = binary.AppendUvarint(p, uint64(len(m.kv[k])))
		p = append(p, m.kv[k]...)
	}
	if len(p) > metaSlotLen-metaHeaderLen {
		return nil, fmt.Errorf("%w: %d bytes of keys and values, room for %d", errMetaFull, len(p), metaSlotLen-metaHeaderLen)
	}
	b := make([]byte, metaSlotLen)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(p)))
	copy(b[metaHeaderLen:], p)
	binary.LittleEndian.PutUint32(b, crc32.Checksum(b[4:metaHeaderLen+len(p)], castagnoli))
	return b, nil
}

// decodeMeta decodes a slot. It never panics on bad input.
func decodeMeta(b []byte) (metaState, error) {
	if len(b) < metaHeaderLen {
		return metaState{}, fmt.Errorf("%w: meta slot cut short", ErrCorrupt)
	}
	n := binary.LittleEndian.Uint32(b[4:])
	if n == 0 || uint64(n) > uint64(len(b)-metaHeaderLen) {
		return metaState{}, fmt.Errorf("%w: meta slot length %d", ErrCorrupt, n)
	}
	if crc32.Checksum(b[4:metaHeaderLen+int(n)], castagnoli) != binary.LittleEndian.Uint32(b) {
		return metaState{}, fmt.Errorf("%w: meta slot checksum mismatch", ErrCorrupt)
	}
	d := decoder{buf: b[metaHeaderLen : metaHeaderLen+int(n)]}
	if v := d.byte("version"); d.err == nil && v != metaVersion {
		return metaState{}, fmt.Errorf("meta format version %d, want %d", v, metaVersion)
	}
	if len(d.buf) < 16 {
		return metaState{}, fmt.Errorf("%w: meta slot cut short", ErrCorrupt)
	}
	m := metaState{
		seq:   binary.LittleEndian.Uint64(d.buf),
		first: binary.LittleEndian.Uint64(d.buf[8:]),
		kv:    map[string][]byte{},
	}
	d.buf = d.buf[16:]
	count := d.uvarint("count")
	for i := uint64(0); i < count && d.err == nil; i++ {
		k := d.bytes("key")
		v := d.bytes("value")
		if v == nil {
			v = []byte{}
		}
		m.kv[string(k)] = v
	}
	if d.err != nil {
		return metaState{}, d.err
	}
	if len(d.buf) != 0 {
		return metaState{}, fmt.Errorf("%w: meta slot: %d bytes after the fields", ErrCorrupt, len(d.buf))
	}
	return m, nil
}

// metaFile is the open meta file and the state of its current slot.
type metaFile struct {
	f     File
	path  string
	state metaState
}

// openMeta opens the meta file in dir, creating it when create is set
// and it is missing.
func openMeta(fsys FS, dir string, create bool) (*metaFile, error) {
	path := filepath.Join(dir, metaName)
	f, err := fsys.Open(path)
	if err != nil && isNotExist(err) && create {
		if err := createMeta(fsys, dir); err != nil {
			return nil, err
		}
		f, err = fsys.Open(path)
	}
	if err != nil {
		return nil, err
	}
	b := make([]byte, 2*metaSlotLen)
	if _, err := f.ReadAt(b, 0); err != nil {
		f.Close()
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("%w: %d bytes, want %d", ErrCorrupt, 0, len(b))
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m0, err0 := decodeMeta(b[:metaSlotLen])
	m1, err1 := decodeMeta(b[metaSlotLen:])
	var state metaState
	switch {
	case err0 != nil && err1 != nil:
		f.Close()
		return nil, fmt.Errorf("%s: both slots bad: %w; %w", path, err0, err1)
	case err1 != nil || (err0 == nil && m0.seq > m1.seq):
		state = m0
	default:
		state = m1
	}
	return &metaFile{f: f, path: path, state: state}, nil
}

// createMeta writes a new meta file with both slots valid and empty: it
// is written whole once, so that later writes only overwrite its blocks.
func createMeta(fsys FS, dir string) error {
	path := filepath.Join(dir, metaName)
	tmp := path + ".tmp"
	var b []byte
	for seq := range uint64(2) {
		slot, err := metaState{seq: seq}.encode()
		if err != nil {
			return err
		}
		b = append(b, slot...)
	}
	f, err := fsys.Create(tmp)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(b, 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, path)
	}
	if err == nil {
		err = fsys.SyncDir(dir)
	}
	if err != nil {
		_ = fsys.Remove(tmp)
		return fmt.Errorf("create %s: %w", path, err)
	}
	return nil
}

// write makes next (with the following seq) the current state: it
// overwrites the older slot and syncs. On error the file's current slot
// is unknown until it is read again.
func (m *metaFile) write(next metaState) error {
	next.seq = m.state.seq + 1
	b, err := next.encode()
	if err != nil {
		return err
	}
	if _, err := m.f.WriteAt(b, int64(next.seq%2)*metaSlotLen); err != nil {
		return fmt.Errorf("write %s: %w", m.path, err)
	}
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", m.path, err)
	}
	m.state = next
	return nil
}

// writeMetaLocked makes next the meta state. Caller holds writeMu.
func (s *Store) writeMetaLocked(next metaState) error {
	m := *s.meta
	if err := m.write(next); err != nil {
		if errors.Is(err, errMetaFull) {
			return err
		}
		return s.failLocked(err, nil)
	}
	s.mu.Lock()
	s.meta.state = m.state
	s.mu.Unlock()
	return nil
}

// Set stores val under key durably.
func (s *Store) Set(key, val []byte) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.writable(); err != nil {
		return err
	}
	next := s.meta.state.clone()
	next.kv[string(key)] = slices.Clone(val)
	if next.kv[string(key)] == nil {
		next.kv[string(key)] = []byte{}
	}
	if err := s.writeMetaLocked(next); err != nil {
		return fmt.Errorf("raftlog: set %q: %w", key, err)
	}
	return nil
}

// Get returns the value of key, or nil and no error when there is none:
// raft takes that as unset (doc.go: stable keys).
func (s *Store) Get(key []byte) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	v, ok := s.meta.state.kv[string(key)]
	if !ok {
		return nil, nil
	}
	return slices.Clone(v), nil
}

// SetUint64 stores val under key as 8 bytes, big-endian.
func (s *Store) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 returns the number stored under key by SetUint64, or 0 and no
// error when there is none.
func (s *Store) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil || v == nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raftlog: get uint64 %q: %w: %d bytes", key, ErrCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}
