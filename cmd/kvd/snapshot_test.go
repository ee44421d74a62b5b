package main

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSnapshotSaveStatusRestore runs the commands of the README's backup
// section on real processes: kvctl snapshot save and status, kvd restore
// (refusing a damaged file and writing nothing), and a node started on the
// restored data dir serving the data.
func TestSnapshotSaveStatusRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startKVD(t, ctx, t.TempDir())
	waitReady(t, ctx, p.addr)
	dir := t.TempDir()
	kvctl := filepath.Join(dir, "kvctl")
	if err := os.Symlink(kvdBinary, kvctl); err != nil {
		t.Fatal(err)
	}
	ctl := func(addr string, args ...string) (string, int) {
		out, err := exec.CommandContext(ctx, kvctl, append([]string{"--endpoints", addr}, args...)...).CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return string(out), exit.ExitCode()
		}
		if err != nil {
			t.Fatalf("kvctl %v: %v", args, err)
		}
		return string(out), 0
	}
	kvd := func(args ...string) (string, int) {
		out, err := exec.CommandContext(ctx, kvdBinary, args...).CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return string(out), exit.ExitCode()
		}
		if err != nil {
			t.Fatalf("kvd %v: %v", args, err)
		}
		return string(out), 0
	}
	for _, kv := range [][2]string{{"a", "1"}, {"b", "2"}, {"a", "3"}} {
		if out, code := ctl(p.addr, "put", kv[0], kv[1]); code != 0 {
			t.Fatalf("put: %d %s", code, out)
		}
	}
	file := filepath.Join(dir, "backup.snap")
	out, code := ctl(p.addr, "snapshot", "save", file)
	if code != 0 || !strings.HasPrefix(out, "saved "+file+": revision ") || !strings.Contains(out, " 2 keys") {
		t.Fatalf("snapshot save: %d %q", code, out)
	}
	out, code = ctl(p.addr, "snapshot", "status", file, "-o", "json")
	var st struct {
		Revision int64  `json:"revision"`
		Keys     int64  `json:"keys"`
		Size     int64  `json:"size"`
		SHA256   string `json:"sha256"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Keys != 2 || st.Revision == 0 || len(st.SHA256) != 64 {
		t.Fatalf("snapshot status -o json: %d %q", code, out)
	}
	if out, code = ctl(p.addr, "snapshot", "status", file); code != 0 || !strings.HasPrefix(out, "REVISION") {
		t.Fatalf("snapshot status: %d %q", code, out)
	}

	// A truncated copy: status and restore fail, and restore writes nothing.
	whole, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(dir, "cut.snap")
	if err := os.WriteFile(cut, whole[:len(whole)-10], 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code = ctl(p.addr, "snapshot", "status", cut); code != 1 || !strings.Contains(out, "truncated") {
		t.Fatalf("status of a truncated file: %d %q", code, out)
	}
	target := filepath.Join(dir, "restored")
	if out, code = kvd("restore", "--from", cut, "--data-dir", target); code != 1 || !strings.Contains(out, "truncated") {
		t.Fatalf("restore of a truncated file: %d %q", code, out)
	}
	if _, err := os.Stat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a failed restore left %s (%v)", target, err)
	}
	if out, code = kvd("restore", "--data-dir", target); code != 2 || !strings.Contains(out, "--from is required") {
		t.Fatalf("restore without --from: %d %q", code, out)
	}

	out, code = kvd("restore", "--from", file, "--data-dir", target, "--name", "r1")
	if code != 0 || !strings.HasPrefix(out, "restored ") {
		t.Fatalf("restore: %d %q", code, out)
	}
	if out, code = kvd("restore", "--from", file, "--data-dir", target); code != 1 || !strings.Contains(out, "not empty") {
		t.Fatalf("restore over a data dir: %d %q", code, out)
	}
	r := startKVD(t, ctx, target)
	waitReady(t, ctx, r.addr)
	if out, code = ctl(r.addr, "get", "a"); code != 0 || out != "3\n" {
		t.Fatalf("get a on the restored node: %d %q", code, out)
	}
	if out, code = ctl(r.addr, "put", "c", "4"); code != 0 {
		t.Fatalf("put on the restored node: %d %q", code, out)
	}
}
