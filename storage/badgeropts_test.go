package storage

import (
	"bytes"
	"runtime/pprof"
	"strings"
	"testing"
)

// Profiles tell the two Badger databases apart by the db label on the
// goroutines each starts.
func TestBadgerGoroutinesAreLabelled(t *testing.T) {
	openTestStore(t, t.TempDir())
	kvOpen(t, t.TempDir())

	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		t.Fatal(err)
	}
	// debug=1 output: one record per distinct stack, blank-line separated,
	// with a "# labels:" line when the goroutines carry labels.
	labelled := map[string]int{}
	for _, rec := range strings.Split(buf.String(), "\n\n") {
		if !strings.Contains(rec, "dgraph-io/badger") {
			continue
		}
		for _, name := range []string{"raftlog", "state"} {
			if strings.Contains(rec, `# labels: {"db":"`+name+`"}`) {
				labelled[name]++
			}
		}
	}
	for _, name := range []string{"raftlog", "state"} {
		if labelled[name] == 0 {
			t.Errorf("no Badger goroutine labelled db=%s; profile:\n%s", name, buf.String())
		}
	}
}
