package storage

import (
	"reflect"
	"testing"
)

// A store left open by a process that died comes back as it was (the
// kernel kept what it was given); one left open across a reboot comes back
// empty, to be rebuilt from raft; one closed cleanly comes back as it was
// even after a reboot.
func TestKVUncleanStop(t *testing.T) {
	defer func(f func() string) { bootID = f }(bootID)
	boot := "boot-1"
	bootID = func() string { return boot }

	// crash closes Badger but leaves the marker, as a process that died.
	crash := func(s *KV) {
		t.Helper()
		delete(kvOpenStores, s)
		if err := s.db.Close(); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	s := kvOpen(t, dir)
	kvFill(t, s, 1, "a", "1", "b", "1")
	kvFill(t, s, 2, "a", "2")
	want := kvDump(t, s, 0)
	crash(s)

	s = kvOpen(t, dir) // same boot: nothing lost
	if got := kvDump(t, s, 0); s.AppliedIndex() != 2 || !reflect.DeepEqual(got, want) {
		t.Fatalf("after a process crash: applied %d, %q; want 2, %q", s.AppliedIndex(), got, want)
	}
	crash(s)

	boot = "boot-2"
	s = kvOpen(t, dir)
	if got := kvDump(t, s, 0); s.AppliedIndex() != 0 || len(got) != 0 {
		t.Fatalf("after a reboot: applied %d, %q; want an empty store", s.AppliedIndex(), got)
	}
	kvFill(t, s, 1, "c", "1")
	kvClose(t, s)

	boot = "boot-3"
	s = kvOpen(t, dir)
	if s.AppliedIndex() != 1 {
		t.Fatalf("after a clean close and a reboot: applied %d, want 1", s.AppliedIndex())
	}

	// Without a boot id nothing is ever dropped.
	crash(s)
	boot = ""
	s = kvOpen(t, dir)
	if s.AppliedIndex() != 1 {
		t.Fatalf("without a boot id: applied %d, want 1", s.AppliedIndex())
	}
}
