package raftlog

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// FuzzRecord decodes arbitrary bytes as a record (never panicking, never
// accepting what fails its checksum), and round-trips encoded entries.
func FuzzRecord(f *testing.F) {
	seed := segHeader{salt: 42}.seed()
	for _, l := range []*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("hello")},
		{Index: 1 << 40, Term: 7, Type: raft.LogConfiguration, Extensions: []byte("x"), AppendedAt: time.Unix(5, 6)},
	} {
		b, _ := appendRecord(nil, l, true)
		sealRecord(b, seed)
		f.Add(b, false)
		f.Add(b[:len(b)-1], false)
	}
	f.Add([]byte{}, true)
	f.Add(make([]byte, 16), true)
	f.Fuzz(func(t *testing.T, b []byte, reseal bool) {
		if reseal && len(b) > recHeaderLen {
			// Make length and checksum match, to reach the payload decoding.
			b = bytes.Clone(b)
			putLen(b, len(b)-recHeaderLen)
			sealRecord(b, seed)
		}
		var l raft.Log
		if err := decodeRecord(b, seed, &l); err != nil {
			return
		}
		n, flags, index, err := recordAt(b, seed)
		if err != nil || n != len(b) || index != l.Index || flags&^knownFlags != 0 {
			t.Fatalf("decodeRecord accepted what recordAt says is %d, %#x, %d, %v", n, flags, index, err)
		}
		// What decodes encodes to a record that decodes the same.
		b2, err := appendRecord(nil, &l, flags&flagBatchStart != 0)
		if err != nil {
			t.Fatal(err)
		}
		sealRecord(b2, seed)
		var l2 raft.Log
		if err := decodeRecord(b2, seed, &l2); err != nil {
			t.Fatal(err)
		}
		if l2.Index != l.Index || l2.Term != l.Term || l2.Type != l.Type || !bytes.Equal(l2.Data, l.Data) ||
			!bytes.Equal(l2.Extensions, l.Extensions) || !l2.AppendedAt.Equal(l.AppendedAt) {
			t.Fatalf("round trip: %+v became %+v", l, l2)
		}
	})
}

func putLen(b []byte, n int) {
	b[4], b[5], b[6], b[7] = byte(n), byte(n>>8), byte(n>>16), byte(n>>24)
}

// FuzzMeta decodes arbitrary bytes as a meta slot, never panicking, and
// round-trips what decodes.
func FuzzMeta(f *testing.F) {
	b, _ := metaState{seq: 3, first: 9, kv: map[string][]byte{"CurrentTerm": {0, 0, 0, 0, 0, 0, 0, 2}, "LastVoteCand": []byte("n1")}}.encode()
	f.Add(b)
	f.Add(b[:40])
	f.Add(make([]byte, metaSlotLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b)
		if err != nil {
			return
		}
		b2, err := m.encode()
		if err != nil {
			t.Fatal(err)
		}
		m2, err := decodeMeta(b2)
		if err != nil || m2.seq != m.seq || m2.first != m.first || len(m2.kv) != len(m.kv) {
			t.Fatalf("round trip: %+v became %+v (%v)", m, m2, err)
		}
		for k, v := range m.kv {
			if !bytes.Equal(m2.kv[k], v) {
				t.Fatalf("round trip: %q: %q became %q", k, v, m2.kv[k])
			}
		}
	})
}

// FuzzOpenSegment opens a store whose only segment holds arbitrary bytes
// after a valid header (the index Open builds from records): it never
// panics, and when it opens, every index it reports reads back.
func FuzzOpenSegment(f *testing.F) {
	h := segHeader{base: 5, salt: 7}
	var good []byte
	for i := uint64(5); i < 9; i++ {
		r, _ := appendRecord(nil, entry(i, 1), i == 5)
		sealRecord(r, h.seed())
		good = append(good, r...)
	}
	f.Add(good)
	f.Add(good[:len(good)-5])
	f.Add(append(bytes.Clone(good), 1, 2, 3))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		const dir = "/store"
		mfs := newMemFS()
		if err := createMeta(mfs, dir); err != nil {
			t.Fatal(err)
		}
		g, _ := mfs.Create(filepath.Join(dir, segName(5)))
		g.WriteAt(append(h.encode(), body...), 0)
		s, err := Open(dir, quietOptions(mfs))
		if err != nil {
			return
		}
		defer s.Close()
		first, _ := s.FirstIndex()
		last, _ := s.LastIndex()
		for i := first; i <= last && last != 0; i++ {
			var l raft.Log
			if err := s.GetLog(i, &l); err != nil {
				t.Fatalf("GetLog(%d) in [%d, %d]: %v", i, first, last, err)
			}
		}
	})
}
