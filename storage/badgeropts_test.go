package storage

import (
	"bytes"
	"runtime/pprof"
	"strings"
	"testing"
)

// Profiles tell Badger's goroutines from the rest by the db label on the
// goroutines the state's database starts.
func TestBadgerGoroutinesAreLabelled(t *testing.T) {
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
		for _, name := range []string{"state"} {
			if strings.Contains(rec, `# labels: {"db":"`+name+`"}`) {
				labelled[name]++
			}
		}
	}
	for _, name := range []string{"state"} {
		if labelled[name] == 0 {
			t.Errorf("no Badger goroutine labelled db=%s; profile:\n%s", name, buf.String())
		}
	}
}
