package storage

import (
	"strings"
	"testing"
)

// The logical size grows with what is written, history included, is the
// same counted afresh (as at open) as kept by the commits, and falls back
// once the history is compacted away.
func TestLogicalBytes(t *testing.T) {
	s := kvOpen(t, t.TempDir())
	value := strings.Repeat("v", 1000)
	idx := uint64(1)
	for round := range 5 {
		kvApply(t, s, idx, func(b *Batch) {
			for i := range 100 {
				kvPut(t, b, "k"+string(rune('a'+i%26))+string(rune('a'+i/26)), value+string(rune('0'+round)))
			}
		})
		idx++
	}
	full := s.LogicalBytes()
	if full < 5*100*1000 {
		t.Fatalf("500 versions of 1000 B take %d bytes", full)
	}
	if err := s.recountUsage(); err != nil {
		t.Fatal(err)
	}
	if n := s.LogicalBytes(); n != full {
		t.Fatalf("counted afresh: %d, kept by commits: %d", n, full)
	}
	kvApply(t, s, idx, func(b *Batch) { kvDel(t, b, "k", "l", false) })
	idx++
	kvApply(t, s, idx, func(b *Batch) {
		if err := b.Compact(idx-1, false); err != nil {
			t.Fatal(err)
		}
	})
	if err := s.CompactNow(idx-1, false); err != nil {
		t.Fatal(err)
	}
	if n := s.LogicalBytes(); n > full/20 {
		t.Fatalf("after deleting every key and compacting: %d bytes of %d", n, full)
	}
	kvClose(t, s)
}
